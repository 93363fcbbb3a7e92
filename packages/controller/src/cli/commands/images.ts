import { KilnError, formatTable, pollUntil } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { note, out, printJson, str } from '../cli-context.js';
import { rolloutBody } from '../rollout-options.js';
import { followDeployment } from '../deploy-watch.js';
import type { BakeBody, DeploymentBody, ImageInfo, ImageList, InstanceInfo, InstanceList } from '../../server/api-types.js';
import { createProgress } from '../progress.js';

export const bakeCommand: CommandDef = {
  name: 'bake',
  summary: 'bake an image holding a release, from a base image; prints each phase and the image id',
  usage: 'bake APP VERSION --from BASE_IMAGE [--regions R1,R2] [--json]',
  examples: ['kiln bake shop 2.0.0 --from img-base', 'kiln bake shop 2.0.0 --from ami-0abc1234 --regions eu-west-1,us-east-1'],
  details:
    "A builder instance is launched from the base image; its agent installs the release at boot through the shared\n" +
    'install routine and seals the root; the builder is stopped, imaged (and the image copied to --regions), then\n' +
    'terminated. An image with the same bake key (base image, manifest sha256, agent version) is reused, not rebuilt:\n' +
    'the same release on the same base with the same agent. Two versions of one app tree are two images.\n' +
    'On failure, everything the bake created is removed and the error names the phase.',
  options: {
    from: { type: 'string', value: 'IMAGE', help: 'the base image (process provider: img-base, or an earlier image)' },
    regions: { type: 'string', value: 'R1,R2', help: 'also copy the image to these regions (ec2)' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [2, 2],
  async run(ctx, flags, [app, version]) {
    const baseImage = str(flags, 'from');
    if (!baseImage) throw new KilnError('KILN_USAGE', 'bake needs --from BASE_IMAGE (`kiln images` lists them)');
    const regions = str(flags, 'regions')?.split(',').filter(Boolean) ?? [];
    const api = await openApi(flags, ctx);
    let { bake } = await api.post<BakeBody>('/v1/bakes', { app, version, baseImage, regions });
    const progress = createProgress(ctx.json ? ctx.io.stderr : ctx.io.stdout);
    progress.phase(`bake ${bake.id}: ${app} ${version} from ${baseImage}`);
    const started = Date.now();
    let shown = 0;
    let asked = false;
    // No deadline here: the controller ends a bake past its own timeouts.
    bake = await pollUntil({
      check: async () => {
        if (asked) bake = (await api.get<BakeBody>(`/v1/bakes/${bake.id}`)).bake;
        asked = true;
        for (; shown < bake.phases.length; shown++) progress.phase(`  ${bake.phases[shown]!.name.padEnd(10)} ${(bake.phases[shown]!.ms / 1000).toFixed(1).padStart(6)} s`);
        progress.status(`baking… ${((Date.now() - started) / 1000).toFixed(1)} s`);
        return bake.state !== 'running' && bake;
      },
      timeoutMs: Infinity,
      intervalMs: 250,
    });
    progress.done();
    if (ctx.json) printJson(ctx, bake);
    if (bake.state === 'succeeded') {
      if (!ctx.json) out(ctx, `image ${bake.image}${bake.skipped ? ' (baked before with the same bake key: reused)' : ''}${bake.copies.length ? `; copies ${bake.copies.map((c) => `${c.region}:${c.id}`).join(', ')}` : ''}`);
      return 0;
    }
    note(ctx, `error ${bake.error?.code ?? 'KILN_BAKE_FAILED'}: ${bake.error?.message ?? 'the bake failed'}`);
    return 1;
  },
};

export const healCommand: CommandDef = {
  name: 'heal',
  summary: "replace a fleet's drifted instances (hotfixed or tampered) with fresh ones from an image of what they should run",
  usage: 'heal FLEET [--max-failures N] [--health-timeout 30s] [--no-wait] [--json]',
  examples: ['kiln heal web', 'kiln heal web --health-timeout 2m --no-wait'],
  details:
    "When the live group's image holds the fleet's desired release, each drifted instance is replaced by a new one of\n" +
    'that image. Otherwise that release is baked (or its image found by bake key) and the whole group replaced, like\n' +
    '`kiln deploy --strategy bake`. Unreachable instances are listed in the verdict, not skipped silently.',
  options: {
    'max-failures': { type: 'string', value: 'N', help: 'new instances that may fail their health gate (default 0)' },
    'health-timeout': { type: 'string', value: 'DURATION', help: 'how long a new instance has to report healthy (default 30s)' },
    'no-wait': { type: 'boolean', help: 'print the deployment and return at once' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    // heal has no --batch: its instances are gated all at once
    const body = rolloutBody(flags);
    const api = await openApi(flags, ctx);
    const { deployment } = await api.post<DeploymentBody>(`/v1/fleets/${encodeURIComponent(fleet!)}/heal`, body);
    if (flags['no-wait']) {
      if (ctx.json) return printJson(ctx, deployment);
      return out(ctx, `heal ${deployment.id} started; follow it with \`kiln deployments show ${deployment.id} --follow\``);
    }
    return followDeployment(ctx, api, deployment);
  },
};

export const instancesCommand: CommandDef = {
  name: 'instances',
  summary: "the provider's instances kiln launched (all, or a fleet's): state, image, group, address",
  usage: 'instances [--fleet FLEET] [--json]',
  examples: ['kiln instances', 'kiln instances --fleet web --json'],
  options: { fleet: { type: 'string', value: 'FLEET', help: "only this fleet's" }, ...API_OPTIONS, ...JSON_OPTION },
  positionals: [0, 0],
  async run(ctx, flags) {
    const api = await openApi(flags, ctx);
    const fleet = str(flags, 'fleet');
    // The provider knows tags, not fleets: a fleet that does not exist is said so, not shown as empty.
    if (fleet) await api.get(`/v1/fleets/${encodeURIComponent(fleet)}`);
    const { instances, provider } = await api.get<InstanceList>(`/v1/instances${fleet ? `?fleet=${encodeURIComponent(fleet)}` : ''}`);
    if (ctx.json) return printJson(ctx, instances);
    if (!instances.length) return out(ctx, `no instances on the ${provider} provider${fleet ? ` for fleet ${fleet}` : ''}`);
    const t = (i: InstanceInfo, k: string) => i.tags[`kiln:${k}`] ?? '-';
    out(ctx, formatTable(['INSTANCE', 'STATE', 'IMAGE', 'FLEET', 'GROUP', 'ROLE', 'ADDRESS', 'LAUNCHED'], instances.map((i) => [i.id, i.state, i.imageId, t(i, 'fleet'), t(i, 'group'), t(i, 'role'), i.address ?? '-', i.launchedAt])));
  },
};

export const imagesCommand: CommandDef = {
  name: 'images',
  summary: "the provider's images: what each holds (app, version) and where it came from",
  usage: 'images [--json]',
  examples: ['kiln images'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [0, 0],
  async run(ctx, flags) {
    const api = await openApi(flags, ctx);
    const { images, provider } = await api.get<ImageList>('/v1/images');
    if (ctx.json) return printJson(ctx, images);
    if (!images.length) return out(ctx, `no images on the ${provider} provider`);
    const t = (i: ImageInfo, k: string) => i.tags[`kiln:${k}`] ?? '-';
    out(ctx, formatTable(['IMAGE', 'STATE', 'APP', 'VERSION', 'BASE', 'BAKE PHASES (ms)', 'CREATED'], images.map((i) => [i.id, i.state, t(i, 'app'), t(i, 'version'), t(i, 'base-image'), t(i, 'bake-phases'), i.createdAt])));
  },
};
