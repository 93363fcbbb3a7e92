import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, formatTable, writeFileAtomic } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { out, printJson, str } from '../cli-context.js';
import type { DeploymentList, FleetBody, FleetCreated, FleetDeleted, FleetList, PublicFleet } from '../../server/api-types.js';
import { fleetCredentialFile } from '../../local/local-files.js';
import { describeTarget } from '../../fleets/fleet-model.js';
import { readLocalAgents, removeLocalAgents } from '../../local/local-agents.js';
import { stopLocalAgent } from '../../providers/process/agent-process.js';

const TARGET_GROUP_ARN = /^arn:[\w-]+:elasticloadbalancing:[\w-]+:\d{12}:targetgroup\/[\w-]{1,32}\/[0-9a-f]+$/;

/** The NAME of `…:targetgroup/NAME/ID`: the whole ARN would take most of a table row (--json has it). */
const targetGroupName = (arn: string | null) => (arn ? (/:targetgroup\/([^/]+)\//.exec(arn)?.[1] ?? arn) : '-');

export const fleetCreate: CommandDef = {
  name: 'fleet create',
  summary: "create a fleet; prints its agent credential (once) and saves it for local agents",
  usage: 'fleet create NAME --app APP [--channel CHANNEL] [--provider process --size N [--image ID]] [--target-group ARN] [--json]',
  examples: ['kiln fleet create web --app shop --channel stable   # follows what `kiln release promote shop V --channel stable` points to', 'kiln fleet create web --app shop --provider process --size 3'],
  details:
    'A fleet is the instances of one app following one channel. Its agents connect with the credential printed here,\nwhich the controller keeps only as a digest; it is also saved to .kiln/fleets/NAME.credential (0600) for `kiln agents start`.\n' +
    "The channel is the fleet's own: by default its name, and no two fleets of an app may follow one (KILN_CHANNEL_TAKEN),\n" +
    "since deploying one fleet moves the pointer the other's instances boot from. A new fleet wants what its channel points to.\n" +
    'With --target-group (ec2), a bake or relaunch registers the new group in that ELBv2 target group and waits until it is healthy,\nthen deregisters the old group and waits for connection draining before it stops.',
  options: {
    app: { type: 'string', value: 'APP', help: 'the app its instances run' },
    channel: { type: 'string', value: 'CHANNEL', help: "the channel they follow, one no other fleet of the app follows (default: the fleet's name)" },
    provider: { type: 'string', value: 'NAME', help: 'none (agents you start yourself; the default) or the provider the controller runs (`kiln up`: process), for bake, relaunch and heal' },
    image: { type: 'string', value: 'ID', help: 'the image its instances launch from and bakes start from (process: default the plain base image)' },
    size: { type: 'string', value: 'N', help: 'how many instances each group launches (default 0; bake and relaunch launch at least 1)' },
    'target-group': { type: 'string', value: 'ARN', help: 'ec2: the ELBv2 target group (instance targets, same region) its live group serves behind' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [name]) {
    const app = str(flags, 'app');
    if (!app) throw new KilnError('KILN_USAGE', 'fleet create needs --app APP');
    const provider = str(flags, 'provider');
    const targetGroup = str(flags, 'target-group');
    if (targetGroup !== undefined && provider !== 'ec2') throw new KilnError('KILN_USAGE', '--target-group needs --provider ec2: only the ec2 provider has load balancers');
    if (targetGroup !== undefined && !TARGET_GROUP_ARN.test(targetGroup)) {
      throw new KilnError('KILN_USAGE', `--target-group ${targetGroup}: the ARN of an ELBv2 target group, arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID`);
    }
    const api = await openApi(flags, ctx);
    const size = str(flags, 'size');
    if (size !== undefined && !/^\d{1,5}$/.test(size)) throw new KilnError('KILN_USAGE', `--size ${size}: a whole number of instances`);
    const image = str(flags, 'image');
    const res = await api.post<FleetCreated>('/v1/fleets', {
      name,
      app,
      ...(str(flags, 'channel') !== undefined ? { channel: str(flags, 'channel') } : {}),
      ...(provider ? { provider } : {}),
      ...(image ? { image } : {}),
      ...(size !== undefined ? { size: Number(size) } : {}),
      ...(targetGroup ? { targetGroup } : {}),
    });
    const file = fleetCredentialFile(ctx.home, res.fleet.name);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFileAtomic(file, `${res.agentCredential}\n`, 0o600);
    if (ctx.json) return printJson(ctx, { ...res, credentialFile: file, agentsUrl: api.agentsUrl });
    const f = res.fleet;
    out(
      ctx,
      [
        `fleet ${f.name}: app ${f.app}, channel ${f.channel}, desired ${f.desired?.version ?? '- (the channel points nowhere yet)'}${f.provider !== 'none' ? `, ${f.provider} provider, image ${f.image}, size ${f.size}` : ''}`,
        ...(f.targetGroup ? [`target group      ${f.targetGroup}`] : []),
        `endpoint          ${f.endpoint ?? (f.provider === 'none' ? '- (no load balancer: its hosts are reached directly)' : '- (no load balancer: deployments are not drained)')}`,
        `agent credential  ${res.agentCredential}`,
        `                  shown once; saved to ${file} (0600)`,
        `agents connect to ${api.agentsUrl}`,
        f.provider === 'none'
          ? `start local agents with: kiln agents start ${f.name} --count 3${f.desired ? '' : `, then install a release on them: kiln deploy ${f.name} VERSION`}`
          : `launch its first group with: kiln deploy ${f.name} VERSION --strategy bake`,
      ].join('\n'),
    );
  },
};

export const fleetList: CommandDef = {
  name: 'fleet list',
  summary: 'list the fleets',
  usage: 'fleet list [--json]',
  examples: ['kiln fleet list', 'kiln fleet list --json --controller https://kiln.example.com:7070'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [0, 0],
  async run(ctx, flags) {
    const { fleets } = await (await openApi(flags, ctx)).get<FleetList>('/v1/fleets');
    if (ctx.json) return printJson(ctx, fleets);
    if (!fleets.length) return out(ctx, 'no fleets yet: `kiln fleet create NAME --app APP`');
    const live = (f: PublicFleet) => f.groups.find((g) => g.state === 'live');
    // the column only when some fleet has a target group: most have none
    const balanced = fleets.some((f) => f.targetGroup);
    out(
      ctx,
      formatTable(
        ['NAME', 'APP', 'CHANNEL', 'PROVIDER', 'IMAGE', 'LIVE GROUP', 'SIZE', ...(balanced ? ['TARGET GROUP'] : []), 'DESIRED', 'CREATED'],
        fleets.map((f) => [
          f.name, f.app, f.channel, f.provider, f.image ?? '-', live(f)?.name ?? '-', String(f.size),
          ...(balanced ? [targetGroupName(f.targetGroup)] : []),
          f.desired ? describeTarget(f.desired) : '-', f.createdAt,
        ]),
      ),
    );
  },
};

/** `fleet show` lists this many of the fleet's last deployments (`kiln deployments FLEET` lists them all). */
const LAST_DEPLOYMENTS = 5;

export const fleetShow: CommandDef = {
  name: 'fleet show',
  summary: 'show one fleet: app, channel, provider, size, image, groups, desired release and config, its last deployments',
  usage: 'fleet show FLEET [--json]',
  examples: ['kiln fleet show web', 'kiln fleet show web --json'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [name]) {
    const api = await openApi(flags, ctx);
    const { fleet: f } = await api.get<FleetBody>(`/v1/fleets/${encodeURIComponent(name!)}`);
    const { deployments: all } = await api.get<DeploymentList>(`/v1/deployments?fleet=${encodeURIComponent(f.name)}`);
    const deployments = all.slice(-LAST_DEPLOYMENTS);
    if (ctx.json) return printJson(ctx, { fleet: f, deployments });
    const desired = f.desired ? `${f.desired.version} (seq ${f.desired.seq})${f.desired.config ? `, config ${f.desired.config.seq}` : ''}` : '- (nothing deployed yet, and the channel pointed nowhere when it was created)';
    out(
      ctx,
      [
        `fleet             ${f.name}`,
        `app               ${f.app}`,
        `channel           ${f.channel}`,
        `provider          ${f.provider}`,
        ...(f.provider !== 'none' ? [`image             ${f.image ?? '-'}`, `size              ${f.size}`] : []),
        ...(f.targetGroup ? [`target group      ${f.targetGroup}`] : []),
        `endpoint          ${f.endpoint ?? (f.provider === 'none' ? '- (no load balancer: its hosts are reached directly)' : '- (no load balancer: deployments are not drained)')}`,
        `desired           ${desired}`,
        `earlier           ${f.history.map((h) => describeTarget(h)).join(', ') || '-'}`,
        `created           ${f.createdAt}`,
      ].join('\n'),
    );
    if (f.provider !== 'none') {
      out(ctx, '');
      out(ctx, f.groups.length ? formatTable(['GROUP', 'STATE', 'IMAGE', 'RELEASE', 'INSTANCES'], f.groups.map((g) => [g.name, g.state, g.image, g.release ? describeTarget(g.release) : '-', g.instances.join(' ') || '-'])) : `no groups yet: \`kiln deploy ${f.name} VERSION --strategy bake\` launches the first`);
    }
    out(ctx, '');
    if (!deployments.length) return out(ctx, 'no deployments yet');
    out(ctx, `the last ${deployments.length} of ${all.length} deployment(s) (all: \`kiln deployments ${f.name}\`):`);
    out(ctx, formatTable(['ID', 'KIND', 'STRATEGY', 'RELEASE', 'STATE', 'CREATED'], deployments.map((d) => [d.id, d.kind, d.strategy, describeTarget(d.release), d.state, d.createdAt])));
  },
};

/** What a change means for what already runs: it is written to the record, and nothing is relaunched by it. */
function changeNotes(before: PublicFleet, after: PublicFleet): string[] {
  const notes: string[] = [];
  if (before.size !== after.size) notes.push(`size ${before.size} -> ${after.size}: the next bake, relaunch or heal launches ${after.size}; the live group keeps the instances it has`);
  if (before.image !== after.image) notes.push(`image ${before.image ?? '-'} -> ${after.image}: the next relaunch launches from it and the next bake starts from its base; running instances keep theirs`);
  if (before.channel !== after.channel) {
    notes.push(
      `channel ${before.channel} -> ${after.channel}: deployments move ${after.app}/${after.channel} from now on and instances launched from now on follow it; ` +
        `running ones keep ${before.channel} in their config (they read it only while the controller is away) until replaced (bake, relaunch, heal) or, local agents, restarted (\`kiln agents stop\`, \`kiln agents start\`)`,
    );
  }
  if (before.targetGroup !== after.targetGroup) notes.push(`target group ${before.targetGroup ?? '-'} -> ${after.targetGroup ?? '-'}: the next bake or relaunch registers its new group there; the live group stays registered where it is`);
  return notes;
}

export const fleetUpdate: CommandDef = {
  name: 'fleet update',
  summary: "change a fleet's size, channel, image or target group",
  usage: 'fleet update FLEET [--size N] [--channel CHANNEL] [--image ID] [--target-group ARN|none] [--json]',
  examples: ['kiln fleet update web --size 5', 'kiln fleet update web --channel beta', 'kiln fleet update web --image img-1a2b3c4d'],
  details:
    'The change is checked (an image on the fleet\'s provider, a target group on ec2 only, a channel no other fleet of\n' +
    'the app follows) and written to the fleet\'s record; refused while a deployment of the fleet runs (KILN_FLEET_BUSY).\n' +
    'Nothing is relaunched by it: the next bake, relaunch or heal launches with the new size and image into the new\n' +
    'target group; the next deployment moves the new channel. Running instances keep their image and the channel\n' +
    'they booted with until replaced.',
  options: {
    size: { type: 'string', value: 'N', help: 'how many instances each group launches' },
    channel: { type: 'string', value: 'CHANNEL', help: 'the channel the fleet follows' },
    image: { type: 'string', value: 'ID', help: 'the image its instances launch from and its bakes start from' },
    'target-group': { type: 'string', value: 'ARN', help: 'ec2: the ELBv2 target group its live group serves behind ("none": no target group)' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [name]) {
    const size = str(flags, 'size');
    if (size !== undefined && !/^\d{1,5}$/.test(size)) throw new KilnError('KILN_USAGE', `--size ${size}: a whole number of instances`);
    const targetGroup = str(flags, 'target-group');
    if (targetGroup !== undefined && targetGroup !== 'none' && !TARGET_GROUP_ARN.test(targetGroup)) {
      throw new KilnError('KILN_USAGE', `--target-group ${targetGroup}: the ARN of an ELBv2 target group, arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID, or none`);
    }
    const channel = str(flags, 'channel');
    const image = str(flags, 'image');
    const change = {
      ...(size !== undefined ? { size: Number(size) } : {}),
      ...(channel !== undefined ? { channel } : {}),
      ...(image !== undefined ? { image } : {}),
      ...(targetGroup !== undefined ? { targetGroup: targetGroup === 'none' ? null : targetGroup } : {}),
    };
    if (!Object.keys(change).length) throw new KilnError('KILN_USAGE', 'fleet update needs at least one of --size N, --channel CHANNEL, --image ID, --target-group ARN|none');
    const api = await openApi(flags, ctx);
    const route = `/v1/fleets/${encodeURIComponent(name!)}`;
    const { fleet: before } = await api.get<FleetBody>(route);
    const { fleet: after } = await api.patch<FleetBody>(route, change);
    if (ctx.json) return printJson(ctx, after);
    const notes = changeNotes(before, after);
    out(ctx, notes.length ? [`fleet ${after.name} updated:`, ...notes.map((n) => `  ${n}`)].join('\n') : `fleet ${after.name}: nothing changed (it already had these values)`);
  },
};

export const fleetDelete: CommandDef = {
  name: 'fleet delete',
  summary: 'delete a fleet: terminate its instances, delete the images its bakes made, remove its records',
  usage: 'fleet delete FLEET [--keep-images] [--json]',
  examples: ['kiln fleet delete web', 'kiln fleet delete web --keep-images'],
  details:
    'Refused while a deployment of the fleet runs (KILN_FLEET_BUSY: wait for it or `kiln deployments cancel ID`).\n' +
    "Then, on the controller: the fleet's instances on its provider are terminated; the images its bakes made are\n" +
    'deleted, unless --keep-images or another fleet launches from them; its deployment records and its record are\n' +
    'removed; its agents are disconnected and its credential refused. The channel pointer stays: it belongs to the\n' +
    "app's channel in the bucket (releases and `kiln host install --channel` use it). Here: its saved credential\n" +
    "(.kiln/fleets/FLEET.credential) is removed and, when the controller is this directory's `kiln up`, the fleet's\n" +
    "local agents (`kiln agents start`) are stopped; the agents' roots stay.",
  options: {
    'keep-images': { type: 'boolean', help: 'keep the images its bakes made (`kiln images` lists them; a new fleet can launch from one with --image)' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [name]) {
    const api = await openApi(flags, ctx);
    const done = await api.delete<FleetDeleted>(`/v1/fleets/${encodeURIComponent(name!)}${flags['keep-images'] ? '?keepImages=true' : ''}`);
    // The local agents of that name belong to the `kiln up` here: a fleet deleted on another controller leaves them.
    const local = api.local ? await readLocalAgents(ctx.home, done.fleet) : undefined;
    const agents = local ? await Promise.all(local.agents.map(async (a) => ({ instanceId: a.instanceId, ...(await stopLocalAgent(a, local.app, ctx.log)) }))) : [];
    if (local) await removeLocalAgents(ctx.home, done.fleet);
    await rm(fleetCredentialFile(ctx.home, done.fleet), { force: true });
    if (ctx.json) return printJson(ctx, { ...done, localAgents: agents });
    out(
      ctx,
      [
        `fleet ${done.fleet} deleted`,
        `instances terminated  ${done.terminated.join(' ') || '-'}`,
        `images deleted        ${done.imagesDeleted.join(' ') || '-'}`,
        ...(done.imagesKept.length ? [`images kept           ${done.imagesKept.join(' ')}${flags['keep-images'] ? '' : ' (another fleet launches from them)'}`] : []),
        `deployment records    ${done.deployments} removed`,
        ...(agents.length ? [`local agents stopped  ${agents.map((a) => a.instanceId).join(' ')}`] : []),
      ].join('\n'),
    );
  },
};
