import { KilnError, formatTable, parseDuration } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef, type OptionDef } from '../cli-command.js';
import { out, printJson, str, type CliContext, type Flags } from '../cli-context.js';
import { fetchedText, followDeployment, gatesLine, soakLine, tally } from '../deploy-watch.js';
import type { Deployment, DeploymentBody, DeploymentList } from '../../server/api-types.js';
import { describeTarget } from '../../fleets/fleet-model.js';
import { GATE_OPTIONS, ROLLOUT_OPTIONS, gateBody, rolloutBody } from '../rollout-options.js';

const STRATEGIES = ['hotfix', 'bake', 'relaunch'];

export const deployCommand: CommandDef = {
  name: 'deploy',
  summary: "deploy a release (or the fleet's latest config) to a fleet and follow it live: hotfix (in place), relaunch or bake (new instances)",
  usage: 'deploy FLEET VERSION|--config [--strategy hotfix|relaunch|bake] [--batch 25%|N] [--max-failures N] [--health-timeout 30s] [--canary N [--canary-wait 10m]] [--soak 30s [--max-error-rate 5%] [--alarm NAME]] [--no-wait] [--json]',
  examples: [
    'kiln deploy web 2.0.0 --batch 50%',
    'kiln deploy web 2.0.0 --strategy bake --health-timeout 2m',
    'kiln deploy web 2.0.1 --max-failures 1 --no-wait',
    'kiln deploy web 2.0.2 --canary 1 --soak 30s --max-error-rate 1%   # pauses after the canary: kiln deployments promote ID',
    'kiln deploy web 2.0.2 --strategy relaunch --canary 1 --canary-wait 10m',
    'kiln deploy web --config --batch 1   # the latest `kiln config set` of web, with the release it runs',
  ],
  details:
    "hotfix: the fleet's channel pointer moves first (instances launched later boot into the release); then each\n" +
    'batch is told to install it, and counts once its agents report it installed and healthy. Past --max-failures\n' +
    'the touched instances are rolled back and the pointer restored.\n' +
    "relaunch: a new group is launched from the fleet's image; each agent installs the release at boot.\n" +
    'bake: an image holding the release is baked first (or found by its bake key), and the new group launches from it.\n' +
    'Either way the new group must pass its health gate to go live; the old group is stopped (kept for `kiln rollback`),\n' +
    'the one before it terminated; a group that fails is removed and the live one stays. Exit 0 only on success.\n' +
    "Behind a load balancer (HAProxy under `kiln up`, a fleet's ELBv2 target group) every swap is drained: a hotfix batch\n" +
    'leaves the balancer before its install and is back, healthy, before the next; a new group serves before the old one\n' +
    'drains. --canary pauses after the first N (exit 0, state paused; with --canary-wait it goes on by itself);\n' +
    '--soak and --max-error-rate judge each batch before the next (docs/balancers.md).\n' +
    'The deployment runs in the controller: Ctrl-C stops following it, not the deployment (exit 130, with the commands\n' +
    'that follow or cancel it).\n' +
    "Every deployment takes the fleet's latest config version along with the release (docs/config.md); --config\n" +
    "deploys that config with the release the fleet runs, through the same batches, health gate and rollback: a\n" +
    'failure sends the instances already done back to the release and config they ran before.',
  options: {
    config: { type: 'boolean', help: "deploy the fleet's latest config version (`kiln config set`) with its desired release" },
    strategy: { type: 'string', value: 'NAME', help: 'hotfix (default), relaunch or bake; relaunch and bake need a fleet on a provider' },
    ...ROLLOUT_OPTIONS,
    ...GATE_OPTIONS,
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 2],
  async run(ctx, flags, [fleet, version]) {
    const strategy = str(flags, 'strategy') ?? 'hotfix';
    if (!STRATEGIES.includes(strategy)) throw new KilnError('KILN_USAGE', `--strategy ${strategy}: one of ${STRATEGIES.join(', ')}`);
    const config = flags.config === true;
    if (!version && !config) throw new KilnError('KILN_USAGE', `deploy ${fleet} needs the VERSION to deploy, or --config to deploy the fleet's latest config with the release it runs`);
    const body = { ...rolloutBody(flags), ...gateBody(flags), ...(version ? { version } : {}), ...(config ? { config } : {}) };
    const api = await openApi(flags, ctx);
    const { deployment } = await api.post<DeploymentBody>('/v1/deployments', { fleet, strategy, ...body });
    if (flags['no-wait']) return printCreated(ctx, deployment);
    return followDeployment(ctx, api, deployment);
  },
};

export const fleetRollback: CommandDef = {
  name: 'rollback',
  summary: 'roll a fleet back: its stopped group brought back, or else its previous release (or --to VERSION) hotfixed in; follow it',
  usage: 'rollback FLEET [--to VERSION] [--batch 25%|N] [--max-failures N] [--health-timeout 30s] [--no-wait] [--json]',
  examples: ['kiln rollback web', 'kiln rollback web --to 1.0.0 --batch 50%'],
  details:
    'After a bake or relaunch, the group it replaced is still there, stopped: it is started again, gated on health and\n' +
    'made live (seconds, nothing installed). Otherwise the previous release (the one the fleet ran before its last\n' +
    'successful deployment) gets a new pointer and is hotfixed in. With --to VERSION, that older release instead: the\n' +
    'stopped group when it runs that release, or else a new pointer to it, hotfixed in (`kiln release list APP` lists them).\n' +
    'For one host without a controller, see `kiln host rollback`.',
  options: {
    to: { type: 'string', value: 'VERSION', help: "the release to go back to, older than the fleet's (default: the one before its last deployment)" },
    ...ROLLOUT_OPTIONS,
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const to = str(flags, 'to');
    const body = { ...rolloutBody(flags), ...(to ? { version: to } : {}) };
    const api = await openApi(flags, ctx);
    const { deployment } = await api.post<DeploymentBody>(`/v1/fleets/${encodeURIComponent(fleet!)}/rollback`, body);
    if (flags['no-wait']) return printCreated(ctx, deployment);
    return followDeployment(ctx, api, deployment);
  },
};

function printCreated(ctx: CliContext, d: Deployment): void {
  if (ctx.json) return printJson(ctx, d);
  out(ctx, `deployment ${d.id} started: ${d.kind} of fleet ${d.fleet} to ${describeTarget(d.release)} (${strategyOf(d)}); follow it with \`kiln deployments show ${d.id} --follow\``);
}

/**
 * How a deployment goes about it. The record's strategy, except where that would mislead: a rollback
 * to the stopped group starts that group (recorded as relaunch, nothing is launched), and a heal
 * replaces instances, baking first only when no image holds the release.
 */
function strategyOf(d: Deployment): string {
  if (d.kind === 'rollback' && d.strategy !== 'hotfix') return 'standby group';
  if (d.kind === 'heal') return d.phases.some((p) => p.name === 'bake') ? 'bake + replace' : 'replace';
  return d.strategy;
}

const summaryOf = (d: Deployment) => {
  const t = tally(d);
  if (d.state === 'paused') return `paused after the canary: ${t.healthy}/${t.targets} healthy; kiln deployments promote ${d.id} (or abort)`;
  return d.state === 'running' ? `${t.healthy}/${t.targets} healthy, ${t.failed} failed` : (d.verdict ?? d.state);
};

export const deploymentsList: CommandDef = {
  name: 'deployments',
  summary: "list deployments, a fleet's or all (oldest first)",
  usage: 'deployments [FLEET] [--json]',
  examples: ['kiln deployments web', 'kiln deployments --json'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [0, 1],
  async run(ctx, flags, [fleet]) {
    const api = await openApi(flags, ctx);
    const { deployments } = await api.get<DeploymentList>(`/v1/deployments${fleet ? `?fleet=${encodeURIComponent(fleet)}` : ''}`);
    if (ctx.json) return printJson(ctx, deployments);
    if (!deployments.length) return out(ctx, fleet ? `no deployments of fleet ${fleet} yet` : 'no deployments yet');
    out(ctx, formatTable(['ID', 'FLEET', 'KIND', 'STRATEGY', 'RELEASE', 'STATE', 'CREATED', 'VERDICT'], deployments.map((d) => [d.id, d.fleet, d.kind, strategyOf(d), describeTarget(d.release), d.state, d.createdAt, summaryOf(d)])));
  },
};

export const deploymentsShow: CommandDef = {
  name: 'deployments show',
  summary: 'show one deployment: its batches and every instance; --follow waits for its end',
  usage: 'deployments show ID [--follow] [--json]',
  examples: ['kiln deployments show d-mx82njlz-2bbab9', 'kiln deployments show d-mx82njlz-2bbab9 --follow'],
  options: { follow: { type: 'boolean', help: 'follow it live until it ends, like `kiln deploy` (exit 1 unless it succeeds; Ctrl-C stops following, 130)' }, ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [id]) {
    const api = await openApi(flags, ctx);
    const { deployment: d } = await api.get<DeploymentBody>(`/v1/deployments/${encodeURIComponent(id!)}`);
    if (flags.follow) return followDeployment(ctx, api, d);
    if (ctx.json) return printJson(ctx, d);
    out(ctx, `deployment ${d.id}: ${d.kind} of fleet ${d.fleet} to ${d.app} ${describeTarget(d.release)} (from ${d.previous ? describeTarget(d.previous) : '-'}), ${d.state}\nstrategy ${strategyOf(d)}${d.group ? `, group ${d.group}` : ''}${d.image ? `, image ${d.image}` : ''}\n${gatesLine(d)}\n${summaryOf(d)}\n`);
    for (const s of d.soaks) out(ctx, soakLine(s));
    const rows = Object.entries(d.instances)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([iid, i]) => [iid, i.batch >= 0 ? String(i.batch + 1) : '-', i.step, fetchedText(i)?.replace(/^fetched /, '') ?? '-', i.error ? `${i.error.code}: ${i.error.message}` : '-']);
    out(ctx, rows.length ? formatTable(['INSTANCE', 'BATCH', 'STEP', 'FETCHED', 'ERROR'], rows) : 'no instances (none was connected when it started)');
  },
};

export const deploymentsPromote: CommandDef = {
  name: 'deployments promote',
  summary: 'promote a deployment paused at its canary: the rest of the fleet follows',
  usage: 'deployments promote ID [--json]',
  examples: ['kiln deployments promote d-mx82njlz-2bbab9'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  run: (ctx, flags, [id]) => decide(ctx, flags, id!, 'promote'),
};

export const deploymentsAbort: CommandDef = {
  name: 'deployments abort',
  summary: 'abort a deployment paused at its canary: the canary is rolled back (hotfix) or removed (bake, relaunch)',
  usage: 'deployments abort ID [--json]',
  examples: ['kiln deployments abort d-mx82njlz-2bbab9'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  run: (ctx, flags, [id]) => decide(ctx, flags, id!, 'abort'),
};

async function decide(ctx: CliContext, flags: Flags, id: string, what: 'promote' | 'abort'): Promise<void> {
  const api = await openApi(flags, ctx);
  const { deployment: d } = await api.post<DeploymentBody>(`/v1/deployments/${encodeURIComponent(id)}/${what}`);
  if (ctx.json) return printJson(ctx, d);
  out(ctx, `${what} requested: ${d.id} ${what === 'promote' ? 'goes on with the rest of the fleet' : 'rolls the canary back'} (\`kiln deployments show ${d.id} --follow\`)`);
}

export const deploymentsCancel: CommandDef = {
  name: 'deployments cancel',
  summary: 'cancel a running deployment: it stops after the batch in flight',
  usage: 'deployments cancel ID [--json]',
  examples: ['kiln deployments cancel d-mx82njlz-2bbab9'],
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [id]) {
    const api = await openApi(flags, ctx);
    const { deployment: d } = await api.post<DeploymentBody>(`/v1/deployments/${encodeURIComponent(id!)}/cancel`);
    if (ctx.json) return printJson(ctx, d);
    out(ctx, d.state === 'running' ? `cancel requested: ${d.id} stops after the batch in flight (\`kiln deployments show ${d.id} --follow\`)` : `${d.id} already ended: ${d.verdict ?? d.state}`);
  },
};
