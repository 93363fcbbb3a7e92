import { KilnError, isPollTimeout, pollUntil } from '@kiln/shared';
import type { AlarmWatch, TargetStats } from '../balancers/balancer.js';
import type { AgentHub } from '../fleets/agent-hub.js';
import type { SoakResult } from '../fleets/fleet-model.js';
import { healthyOn } from '../fleets/rollout-wait.js';
import type { FleetTraffic } from './fleet-traffic.js';

/** How often a soak (or a paused canary) looks at its instances: HAProxy answers at once; ELBv2 and CloudWatch are throttled past a few calls a second. */
export const watchInterval = (traffic: FleetTraffic | undefined, alarms: AlarmWatch | undefined) => (traffic?.kind === 'elbv2' || alarms ? 5_000 : 250);

export interface Watched {
  ids: string[];
  manifestSha256: string;
  traffic?: FleetTraffic | undefined;
  alarms?: AlarmWatch | undefined;
  hub: Pick<AgentHub, 'get'>;
}

/**
 * What is wrong with instances that should be serving the release, or undefined: an agent gone, an
 * app not running or not on the release, the balancer failing its checks, an alarm firing.
 */
export async function servingProblem(w: Watched): Promise<KilnError | undefined> {
  for (const id of w.ids) {
    const inst = w.hub.get(id);
    if (!inst?.connected) return new KilnError('KILN_SOAK_FAILED', `${id} lost its agent's connection`);
    if (!healthyOn(inst.report, w)) {
      const e = inst.report?.lastError;
      return new KilnError('KILN_SOAK_FAILED', `${id} stopped being healthy on the release${inst.report?.service.active === false ? ' (its app is not running)' : ''}${e ? ` (${e.code}: ${e.message})` : ''}`);
    }
  }
  const health = await w.traffic?.health(w.ids);
  const sick = w.ids.filter((id) => health && health.get(id)?.state !== 'healthy');
  if (sick.length) return new KilnError('KILN_SOAK_FAILED', `the balancer stopped seeing ${sick.map((id) => `${id} (${health!.get(id)?.reason ?? health!.get(id)?.state ?? 'unknown'})`).join(', ')} as healthy`);
  const firing = (await w.alarms?.firing()) ?? [];
  if (firing.length) return new KilnError('KILN_ERROR_RATE', `CloudWatch alarm(s) fired: ${firing.join(', ')}`, { details: { alarms: firing } });
  return undefined;
}

export interface SoakOptions extends Watched {
  batch: number;
  /** the targets still serving the old release: the error-rate baseline (none: the baseline is 0) */
  others: string[];
  soakMs: number;
  maxErrorRate: number | null;
  /** true once the controller is stopping: the soak ends at once, unjudged */
  stopped?: (() => boolean) | undefined;
}

export interface Soaked {
  result: SoakResult;
  /** KILN_SOAK_FAILED (a crash, a failed check) or KILN_ERROR_RATE (5xx over the limit, an alarm) */
  error?: KilnError;
}

/**
 * Watches a batch (or a new group) for `soakMs`: each instance must stay connected, running the
 * release and healthy, and healthy in the balancer; no alarm may fire. At the end, the balancer's
 * 5xx share for the new targets over the window must not exceed the old targets' by more than
 * `maxErrorRate` — a real signal read from the balancer's counters, CloudWatch's equivalent locally.
 * Undefined when the controller stopped before the soak was over: the next one soaks again.
 */
export async function soak(o: SoakOptions): Promise<Soaked | undefined> {
  const began = Date.now();
  const before = o.maxErrorRate !== null ? await o.traffic?.stats([...o.ids, ...o.others]) : null;
  const base: Omit<SoakResult, 'ms' | 'passed' | 'reason'> = { batch: o.batch, instances: o.ids, newTargets: null, oldTargets: null, alarms: [] };
  const fail = (e: KilnError, extra: Partial<SoakResult> = {}): Soaked => ({ result: { ...base, ...extra, ms: Date.now() - began, passed: false, reason: e.message }, error: e });
  let problem: KilnError | 'stopped' | undefined;
  try {
    problem = await pollUntil({ check: async () => (o.stopped?.() ? 'stopped' : servingProblem(o)), timeoutMs: o.soakMs, intervalMs: watchInterval(o.traffic, o.alarms) });
  } catch (err) {
    if (!isPollTimeout(err)) throw err; // the soak is over, nothing went wrong
  }
  if (problem === 'stopped') return undefined;
  if (problem) {
    const alarms = problem.details?.alarms;
    return fail(new KilnError(problem.code, `${problem.message} during the soak`), Array.isArray(alarms) ? { alarms: alarms as string[] } : {});
  }
  if (o.maxErrorRate === null || !before) return { result: { ...base, ms: Date.now() - began, passed: true, reason: null } };
  const after = (await o.traffic?.stats([...o.ids, ...o.others])) ?? before;
  const newTargets = delta(before, after, o.ids);
  const oldTargets = o.others.length ? delta(before, after, o.others) : null;
  const rate = (c: { requests: number; errors5xx: number } | null) => (c && c.requests > 0 ? c.errors5xx / c.requests : 0);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  if (newTargets.requests > 0 && rate(newTargets) - rate(oldTargets) > o.maxErrorRate) {
    const message = `the new targets answered ${newTargets.errors5xx} of ${newTargets.requests} requests with 5xx (${pct(rate(newTargets))}) during the ${o.soakMs} ms soak, ${oldTargets ? `the old ones ${pct(rate(oldTargets))}` : 'with no old targets to compare with'}: over --max-error-rate ${o.maxErrorRate}`;
    return fail(new KilnError('KILN_ERROR_RATE', message), { newTargets, oldTargets });
  }
  const reason = newTargets.requests === 0 ? 'no request reached the new targets during the soak: the error rate could not be judged' : null;
  return { result: { ...base, newTargets, oldTargets, ms: Date.now() - began, passed: true, reason } };
}

function delta(before: Map<string, TargetStats>, after: Map<string, TargetStats>, ids: string[]): { requests: number; errors5xx: number } {
  let requests = 0;
  let errors5xx = 0;
  for (const id of ids) {
    const a = after.get(id);
    const b = before.get(id);
    if (!a) continue;
    // a counter that went down was reset (a balancer restarted): count from zero
    requests += a.requests >= (b?.requests ?? 0) ? a.requests - (b?.requests ?? 0) : a.requests;
    errors5xx += a.errors5xx >= (b?.errors5xx ?? 0) ? a.errors5xx - (b?.errors5xx ?? 0) : a.errors5xx;
  }
  return { requests, errors5xx };
}
