import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, formatTable, writeFileAtomic } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { out, printJson, str } from '../cli-context.js';
import type { FleetCreated, FleetList, PublicFleet } from '../../server/api-types.js';
import { fleetCredentialFile } from '../../local/local-files.js';

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
          f.desired?.version ?? '-', f.createdAt,
        ]),
      ),
    );
  },
};
