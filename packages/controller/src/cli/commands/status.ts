import { formatTable } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { out, printJson } from '../cli-context.js';
import type { FleetDrift, FleetInstances, InstanceRow } from '../../server/api-types.js';
import { describeTarget } from '../../fleets/fleet-model.js';

const dash = (v: string | null) => v ?? '-';
/** the image and the release baked into it: "img-1 (1.0.0)" */
const imageOf = (r: InstanceRow) => (r.imageId ? `${r.imageId} (${r.image ?? 'no release'})` : '-');
/** the config version it runs, and the desired one when they differ: "3", "2 (desired 3)" */
const configOf = (r: InstanceRow) => (r.config === r.desiredConfig ? dash(r.config === null ? null : String(r.config)) : `${r.config ?? 'none'} (desired ${r.desiredConfig ?? 'none'})`);

const fleetPath = (fleet: string, what: string) => `/v1/fleets/${encodeURIComponent(fleet)}/${what}`;

/** What unreachable instances mean and what to do: printed under the summary whenever there are some. */
function unreachableNote(fleet: string, rows: InstanceRow[]): string {
  const ids = rows.filter((r) => r.drift === 'unreachable').map((r) => r.instanceId);
  if (!ids.length) return '';
  return (
    `\n${ids.length} unreachable: ${ids.slice(0, 5).join(', ')}${ids.length > 5 ? ` and ${ids.length - 5} more` : ''}: no agent of theirs reports to this controller, so what they run is unknown.\n` +
    `An agent keeps calling the controller address it was started with; \`kiln deploy\` and \`kiln heal\` fail while ${ids.length === 1 ? 'it is' : 'they are'} unreachable (\`kiln deploy ${fleet} VERSION --strategy relaunch\` replaces the group).`
  );
}

export const statusCommand: CommandDef = {
  name: 'status',
  summary: "a fleet's instances: connected, image, desired, installed, config, how it got there, tree check, last error",
  usage: 'status FLEET [--json]',
  examples: ['kiln status web', 'kiln status web --json'],
  details:
    "The live view from the agents' reports, with a one-line summary: in sync, off their image (hotfixed), drifted, unreachable.\n" +
    'CONFIG is the fleet config version the app runs with, and the desired one when it is another (`kiln deploy FLEET --config`).\n' +
    'An instance of the live group whose agent does not report to this controller is shown unreachable (CONNECTED never:\n' +
    'not since this controller started), never left out.',
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const body = await (await openApi(flags, ctx)).get<FleetInstances>(fleetPath(fleet!, 'instances'));
    if (ctx.json) return printJson(ctx, body);
    const f = body.fleet;
    out(ctx, `fleet ${f.name}: ${f.app} on channel ${f.channel}, desired ${f.desired ? describeTarget(f.desired) : '-'}${f.endpoint ? `, serving at ${f.endpoint}` : ''}\n`);
    if (body.instances.length) {
      const rows = body.instances.map((r) => [r.instanceId, r.connected ? 'yes' : r.lastSeen ? 'no' : 'never', imageOf(r), dash(r.desired), dash(r.installed), configOf(r), dash(r.via), r.tree, r.operation ?? '-', dash(r.lastError)]);
      out(ctx, formatTable(['INSTANCE', 'CONNECTED', 'IMAGE (BAKED)', 'DESIRED', 'INSTALLED', 'CONFIG', 'VIA', 'TREE', 'OPERATION', 'LAST ERROR'], rows));
    }
    out(ctx, body.summary.line + unreachableNote(f.name, body.instances));
  },
};

export const driftCommand: CommandDef = {
  name: 'drift',
  summary: "a fleet's instances that are not in sync: off their image (hotfixed), drifted, unreachable",
  usage: 'drift FLEET [--exit-code] [--json]',
  examples: ['kiln drift web', 'kiln drift web --exit-code || kiln heal web   # in cron or CI'],
  details:
    'in sync: runs the desired release and config as its image carries it, files intact. off-image: runs the desired\n' +
    'release and config, but changed in place (a hotfix; replacing the instance heals it). drifted: not the desired\n' +
    'release or config version (CONFIG: what it runs, and the desired one), or files changed on disk. unreachable:\n' +
    'its agent is not connected or never reported to this controller (what it runs is unknown, so it is not in sync).\n' +
    'With --exit-code it exits 1 when any instance is not in sync (0 when all are), for CI and cron; without, 0 either way.',
  options: {
    'exit-code': { type: 'boolean', help: 'exit 1 when any instance is not in sync, 0 when every one is (like `git diff --exit-code`)' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const body = await (await openApi(flags, ctx)).get<FleetDrift>(fleetPath(fleet!, 'drift'));
    const code = flags['exit-code'] && body.drifted.length ? 1 : 0;
    if (ctx.json) {
      printJson(ctx, body);
      return code;
    }
    if (body.drifted.length) {
      const rows = body.drifted.map((r) => [r.instanceId, r.drift, imageOf(r), dash(r.desired), dash(r.installed), configOf(r), dash(r.via), r.tree]);
      out(ctx, formatTable(['INSTANCE', 'DRIFT', 'IMAGE (BAKED)', 'DESIRED', 'INSTALLED', 'CONFIG', 'VIA', 'TREE'], rows));
    } else {
      out(ctx, body.summary.instances ? `every instance of ${body.fleet.name} is in sync` : `fleet ${body.fleet.name} has no instances`);
    }
    out(ctx, body.summary.line + unreachableNote(body.fleet.name, body.drifted));
    return code;
  },
};
