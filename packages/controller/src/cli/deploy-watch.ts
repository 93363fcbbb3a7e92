import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError, fetchedOf, formatBytes, isKilnError, type ErrorCode } from '@kiln/shared';
import type { ApiClient } from './api-client.js';
import { note, out, printJson, type CliContext } from './cli-context.js';
import type { Deployment, DeploymentBody, ReleaseDetail } from '../server/api-types.js';
import { createProgress } from './progress.js';
import { describeTarget } from '../fleets/fleet-model.js';

type Step = Deployment['instances'][string]['step'];

const STEP_TEXT: Partial<Record<Step, string>> = {
  healthy: 'healthy',
  failed: 'failed',
  'rolled-back': 'rolled back',
  'rollback-failed': 'rollback failed',
  unreachable: 'not connected: not commanded (it converges on the channel pointer when it is back)',
};

/** "fetched 12.0 KiB of 95.0 MiB": what an instance's install read from the bucket of the release's size; undefined when not known. */
export function fetchedText(i: { fetchedBytes?: number | undefined; releaseBytes?: number | undefined }): string | undefined {
  const f = fetchedOf(i);
  return f.fetchedBytes !== undefined ? `fetched ${formatBytes(f.fetchedBytes)} of ${formatBytes(f.releaseBytes!)}` : undefined;
}

/** The batch being worked on: the last one with an instance past `pending`. */
function currentBatch(d: Deployment): number {
  let n = -1;
  d.batches.forEach((b, i) => {
    if (b.some((id) => d.instances[id] && d.instances[id].step !== 'pending')) n = i;
  });
  return n;
}

export function tally(d: Deployment): { healthy: number; failed: number; inFlight: number; pending: number; rolledBack: number; targets: number } {
  const steps = Object.values(d.instances).map((i) => i.step);
  const count = (...s: Step[]) => steps.filter((x) => s.includes(x)).length;
  const targets = d.batches.length ? d.batches.flat().length : steps.filter((s) => s !== 'unreachable').length;
  return { healthy: count('healthy'), failed: count('failed', 'rollback-failed'), inFlight: count('sent'), pending: count('pending'), rolledBack: count('rolled-back'), targets };
}

function countsLine(d: Deployment, started: number): string {
  const t = tally(d);
  const n = currentBatch(d);
  const batch = d.strategy !== 'hotfix' || d.kind === 'heal' ? `phase ${d.phases.at(-1)?.name ?? 'start'} done` : d.batches.length ? `batch ${Math.max(n, 0) + 1}/${d.batches.length}` : 'planning';
  const back = t.rolledBack ? `, ${t.rolledBack} rolled back` : '';
  return `${batch}  healthy ${t.healthy}/${t.targets}, failed ${t.failed}, in flight ${t.inFlight}, pending ${t.pending}${back}  ${((Date.now() - started) / 1000).toFixed(1)} s`;
}

/** The balancer and the gates a deployment runs with, in one line. */
export function gatesLine(d: Deployment): string {
  const gates = [
    d.canary !== null ? `canary ${d.canary}${d.canaryWaitMs !== null ? ` (promoted after ${d.canaryWaitMs / 1000} s)` : ''}` : '',
    d.soakMs ? `soak ${d.soakMs / 1000} s` : '',
    d.maxErrorRate !== null ? `max error rate ${(d.maxErrorRate * 100).toFixed(1)}%` : '',
    d.alarms.length ? `alarms ${d.alarms.join(', ')}` : '',
  ].filter(Boolean);
  return `${d.balancer ? `drained through ${d.balancer}` : 'no load balancer: swaps are not drained'}${gates.length ? `; ${gates.join(', ')}` : ''}`;
}

/** One soak as a line: how long, what the balancer counted, the verdict. */
export function soakLine(s: Deployment['soaks'][number]): string {
  const counts = (c: { requests: number; errors5xx: number } | null) => (c ? `${c.errors5xx} 5xx of ${c.requests}` : '-');
  const what = s.batch >= 0 ? `batch ${s.batch + 1}` : 'group';
  return `  soak of ${what} (${s.instances.length} instance(s), ${(s.ms / 1000).toFixed(1)} s): ${s.passed ? 'passed' : 'FAILED'}; new targets ${counts(s.newTargets)}, old ${counts(s.oldTargets)}${s.alarms.length ? `, alarms ${s.alarms.join(', ')}` : ''}${s.reason ? `: ${s.reason}` : ''}`;
}

/** The exit code of a command that Ctrl-C ended: 128 + SIGINT's number, as shells report it. */
export const INTERRUPTED_EXIT = 130;

/** The code a deployment that did not succeed ends the CLI with. */
function failureCode(d: Deployment): ErrorCode {
  if (d.error?.code) return d.error.code as ErrorCode;
  return d.state === 'cancelled' ? 'KILN_DEPLOY_CANCELLED' : 'KILN_DEPLOY_FAILED';
}

/**
 * Follows a deployment until it ends, polling the API: per-instance lines and, on a terminal, a
 * redrawn status line; then the verdict. Exit code 0 only for a deployment that succeeded; on Ctrl-C
 * it says the deployment goes on (it runs on the controller), how to follow or cancel it, and ends 130.
 */
export async function followDeployment(ctx: CliContext, api: ApiClient, first: Deployment, pollMs = 250): Promise<number> {
  let stopListening = (): void => undefined;
  const interrupted = new Promise<'interrupted'>((resolve) => {
    stopListening = ctx.io.onInterrupt?.(() => resolve('interrupted')) ?? stopListening;
  });
  try {
    return await follow(ctx, api, first, pollMs, interrupted);
  } finally {
    stopListening();
  }
}

async function follow(ctx: CliContext, api: ApiClient, first: Deployment, pollMs: number, interrupted: Promise<'interrupted'>): Promise<number> {
  // With --json, stdout carries only the final record; the story goes to stderr.
  const stream = ctx.json ? ctx.io.stderr : ctx.io.stdout;
  const progress = createProgress(stream);
  const started = Date.now();
  const seen = new Map<string, Step>();
  /** the instances whose install (and what it fetched) was shown */
  const installedShown = new Set<string>();
  let batchShown = -1;
  let phasesShown = 0;
  let d = first;
  const how = d.strategy === 'hotfix' && d.kind !== 'heal' ? `batch ${'percent' in d.batch ? `${d.batch.percent}%` : d.batch.count}, ` : '';
  progress.phase(`deployment ${d.id}: ${d.kind === 'deploy' ? d.strategy : d.kind} of fleet ${d.fleet} to ${d.app} ${describeTarget(d.release)} (${how}max failures ${d.maxFailures}, health timeout ${d.healthTimeoutMs / 1000} s)`);
  if (d.unchanged) progress.phase(`  ${describeTarget(d.release)} is what fleet ${d.fleet} should run already: only instances that run something else change`);
  progress.phase(`  ${gatesLine(d)}`);
  const lost = await replacedData(api, d);
  if (lost) progress.phase(`  ${lost}`);
  let soaksShown = 0;
  let pauseShown = false;
  let lastReached = Date.now();
  const leftRunning = () => {
    progress.done();
    note(
      ctx,
      [
        `interrupted: deployment ${d.id} keeps running on the controller (Ctrl-C stops following it, not the deployment)`,
        `  follow it again: kiln deployments show ${d.id} --follow`,
        `  stop it:         kiln deployments cancel ${d.id}`,
      ].join('\n'),
    );
    return INTERRUPTED_EXIT;
  };
  for (;;) {
    const n = currentBatch(d);
    const line = (id: string) => {
      const i = d.instances[id];
      if (!i) return;
      const fetched = fetchedText(i);
      if (fetched && !installedShown.has(id)) {
        installedShown.add(id);
        progress.phase(`  ${id} installed ${d.release.version} (${fetched})`);
      }
      if (seen.get(id) === i.step) return;
      seen.set(id, i.step);
      const text = STEP_TEXT[i.step];
      if (text) progress.phase(`  ${id} ${text}${i.error ? `: ${i.error.code} ${i.error.message}` : ''}`);
    };
    // In batch order: each batch's header, then what its instances did.
    d.batches.forEach((ids, b) => {
      if (b > n) return;
      if (b > batchShown) progress.phase(`batch ${b + 1}/${d.batches.length}: ${ids.slice(0, 8).join(' ')}${ids.length > 8 ? ` and ${ids.length - 8} more` : ''}`);
      ids.forEach(line);
    });
    batchShown = Math.max(batchShown, n);
    // bake, relaunch, heal: each phase as it ends, with its wall time. The bake's own phases (bake:launch, …)
    // end before the bake phase itself, which holds them: its line says it is their total, not one more.
    for (; phasesShown < d.phases.length; phasesShown++) {
      const p = d.phases[phasesShown]!;
      const name = d.phases.some((q) => q.name.startsWith(`${p.name}:`)) ? `${p.name} (total)` : p.name;
      progress.phase(`  ${name.padEnd(14)} ${(p.ms / 1000).toFixed(1).padStart(6)} s`);
    }
    Object.keys(d.instances).sort().forEach(line);
    for (; soaksShown < d.soaks.length; soaksShown++) progress.phase(soakLine(d.soaks[soaksShown]!));
    if (d.state === 'paused' && !pauseShown) {
      pauseShown = true;
      const auto = d.canaryWaitMs !== null ? `; it is promoted by itself ${d.canaryWaitMs / 1000} s after pausing` : '';
      progress.phase(`paused after the canary${auto}\n  promote: kiln deployments promote ${d.id}\n  abort:   kiln deployments abort ${d.id}`);
      // Without --canary-wait the pause lasts until an operator decides: following it would only wait.
      if (d.canaryWaitMs === null) {
        progress.done();
        if (ctx.json) printJson(ctx, d);
        return 0;
      }
    }
    if (d.state === 'running' && pauseShown) pauseShown = d.promoteRequested || d.abortRequested;
    progress.status(countsLine(d, started));
    if (d.state !== 'running' && d.state !== 'paused') break;
    if ((await Promise.race([sleep(pollMs), interrupted])) === 'interrupted') return leftRunning();
    try {
      const next = await Promise.race([api.get<DeploymentBody>(`/v1/deployments/${d.id}`), interrupted]);
      if (next === 'interrupted') return leftRunning();
      d = next.deployment;
      lastReached = Date.now();
    } catch (err) {
      // A controller restarting is back within seconds; the deployment goes on without us meanwhile.
      if (!isKilnError(err, 'KILN_CONTROLLER_UNREACHABLE') || Date.now() - lastReached > 10_000) {
        progress.done();
        throw new KilnError((err as KilnError).code ?? 'KILN_CONTROLLER_UNREACHABLE', `${(err as Error).message}; deployment ${d.id} may still be running: \`kiln deployments show ${d.id}\``);
      }
    }
  }
  progress.done();
  if (ctx.json) printJson(ctx, d);
  else out(ctx, `deployment ${d.id} ${d.verdict ?? d.state}`);
  if (d.state === 'succeeded') return 0;
  note(ctx, `error ${failureCode(d)}: ${d.error?.message ?? d.verdict ?? d.state}`);
  return 1;
}

/**
 * A deployment that replaces instances (heal, bake, relaunch) of a release with persistent
 * directories: their data stays on the instances it retires. Said before it starts, not after.
 */
async function replacedData(api: ApiClient, d: Deployment): Promise<string | undefined> {
  if (d.kind !== 'heal' && d.strategy === 'hotfix') return undefined;
  const r = await api.get<ReleaseDetail>(`/v1/releases/${d.app}/${d.release.version}`).catch(() => undefined);
  if (!r?.persist.length) return undefined;
  return `warning: ${d.app} keeps data in persistent directories (${r.persist.join(", ")}) on each instance; the new instances start with theirs empty and the data of those replaced is not carried over (docs/app.md)`;
}
