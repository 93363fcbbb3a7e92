import { KilnError, formatTable, parseDuration } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef, type OptionDef } from '../cli-command.js';
import { out, printJson, str, type CliContext, type Flags } from '../cli-context.js';
import { followDeployment, tally } from '../deploy-watch.js';
import type { Deployment, DeploymentBody, DeploymentList } from '../../server/api-types.js';
import { ROLLOUT_OPTIONS, rolloutBody } from '../rollout-options.js';

const STRATEGIES = ['hotfix', 'bake', 'relaunch'];

export const deployCommand: CommandDef = {
  name: 'deploy',
  summary: 'deploy a release to a fleet and follow it live: hotfix (in place), relaunch or bake (new instances)',
  usage: 'deploy FLEET VERSION [--strategy hotfix|relaunch|bake] [--batch 25%|N] [--max-failures N] [--health-timeout 30s] [--no-wait] [--json]',
  details:
    "hotfix: the fleet's channel pointer moves first (instances launched later boot into the release); then each\n" +
    'batch is told to install it, and counts once its agents report it installed and healthy. Past --max-failures\n' +
    'the touched instances are rolled back and the pointer restored.\n' +
    "relaunch: a new group is launched from the fleet's image; each agent installs the release at boot.\n" +
    'bake: an image holding the release is baked first (or found by its bake key), and the new group launches from it.\n' +
    'Either way the new group must pass its health gate to go live; the old group is stopped (kept for `kiln rollback`),\n' +
    'the one before it terminated; a group that fails is removed and the live one stays. Exit 0 only on success.',
  options: {
    strategy: { type: 'string', value: 'NAME', help: 'hotfix (default), relaunch or bake; relaunch and bake need a fleet on a provider' },
    ...ROLLOUT_OPTIONS,
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [2, 2],
  async run(ctx, flags, [fleet, version]) {
    const strategy = str(flags, 'strategy') ?? 'hotfix';
    if (!STRATEGIES.includes(strategy)) throw new KilnError('KILN_USAGE', `--strategy ${strategy}: one of ${STRATEGIES.join(', ')}`);
    const body = rolloutBody(flags);
    const api = await openApi(flags, ctx);
    const { deployment } = await api.post<DeploymentBody>('/v1/deployments', { fleet, version, strategy, ...body });
    if (flags['no-wait']) return printCreated(ctx, deployment);
    return followDeployment(ctx, api, deployment);
  },
};

export const fleetRollback: CommandDef = {
  name: 'rollback',
  summary: 'roll a fleet back: its stopped group brought back, or else its previous release hotfixed in; follow it',
  usage: 'rollback FLEET [--batch 25%|N] [--max-failures N] [--health-timeout 30s] [--no-wait] [--json]',
  details:
    'After a bake or relaunch, the group it replaced is still there, stopped: it is started again, gated on health and\n' +
    'made live (seconds, nothing installed). Otherwise the previous release (the one the fleet ran before its last\n' +
    'successful deployment) gets a new pointer and is hotfixed in. For one host without a controller, see `kiln host rollback`.',
  options: { ...ROLLOUT_OPTIONS, ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const body = rolloutBody(flags);
    const api = await openApi(flags, ctx);
    const { deployment } = await api.post<DeploymentBody>(`/v1/fleets/${encodeURIComponent(fleet!)}/rollback`, body);
    if (flags['no-wait']) return printCreated(ctx, deployment);
    return followDeployment(ctx, api, deployment);
  },
};

function printCreated(ctx: CliContext, d: Deployment): void {
  if (ctx.json) return printJson(ctx, d);
  out(ctx, `deployment ${d.id} started: ${d.kind} of fleet ${d.fleet} to ${d.release.version}; follow it with \`kiln deployments show ${d.id} --follow\``);
}

const summaryOf = (d: Deployment) => {
  const t = tally(d);
  return d.state === 'running' ? `${t.healthy}/${t.targets} healthy, ${t.failed} failed` : (d.verdict ?? d.state);
};

export const deploymentsList: CommandDef = {
  name: 'deployments',
  summary: "list deployments, a fleet's or all (oldest first)",
  usage: 'deployments [FLEET] [--json]',
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [0, 1],
  async run(ctx, flags, [fleet]) {
    const api = await openApi(flags, ctx);
    const { deployments } = await api.get<DeploymentList>(`/v1/deployments${fleet ? `?fleet=${encodeURIComponent(fleet)}` : ''}`);
    if (ctx.json) return printJson(ctx, deployments);
    if (!deployments.length) return out(ctx, fleet ? `no deployments of fleet ${fleet} yet` : 'no deployments yet');
    out(ctx, formatTable(['ID', 'FLEET', 'KIND', 'RELEASE', 'STATE', 'CREATED', 'VERDICT'], deployments.map((d) => [d.id, d.fleet, d.kind, d.release.version, d.state, d.createdAt, summaryOf(d)])));
  },
};

export const deploymentsShow: CommandDef = {
  name: 'deployments show',
  summary: 'show one deployment: its batches and every instance; --follow waits for its end',
  usage: 'deployments show ID [--follow] [--json]',
  options: { follow: { type: 'boolean', help: 'follow it live until it ends, like `kiln deploy` (exit 1 unless it succeeds)' }, ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [id]) {
    const api = await openApi(flags, ctx);
    const { deployment: d } = await api.get<DeploymentBody>(`/v1/deployments/${encodeURIComponent(id!)}`);
    if (flags.follow) return followDeployment(ctx, api, d);
    if (ctx.json) return printJson(ctx, d);
    out(ctx, `deployment ${d.id}: ${d.kind} of fleet ${d.fleet} to ${d.app} ${d.release.version} (from ${d.previous?.version ?? '-'}), ${d.state}\n${summaryOf(d)}\n`);
    const rows = Object.entries(d.instances).sort(([a], [b]) => a.localeCompare(b)).map(([iid, i]) => [iid, i.batch >= 0 ? String(i.batch + 1) : '-', i.step, i.error ? `${i.error.code}: ${i.error.message}` : '-']);
    out(ctx, rows.length ? formatTable(['INSTANCE', 'BATCH', 'STEP', 'ERROR'], rows) : 'no instances (none was connected when it started)');
  },
};

export const deploymentsCancel: CommandDef = {
  name: 'deployments cancel',
  summary: 'cancel a running deployment: it stops after the batch in flight',
  usage: 'deployments cancel ID [--json]',
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [id]) {
    const api = await openApi(flags, ctx);
    const { deployment: d } = await api.post<DeploymentBody>(`/v1/deployments/${encodeURIComponent(id!)}/cancel`);
    if (ctx.json) return printJson(ctx, d);
    out(ctx, d.state === 'running' ? `cancel requested: ${d.id} stops after the batch in flight (\`kiln deployments show ${d.id} --follow\`)` : `${d.id} already ended: ${d.verdict ?? d.state}`);
  },
};
