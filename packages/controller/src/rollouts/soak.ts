import { KilnError } from '@kiln/shared';
import type { AlarmWatch, TargetStats } from '../balancers/balancer.js';
import type { AgentHub } from '../fleets/agent-hub.js';
import type { SoakResult } from '../fleets/fleet-model.js';
import { healthyOn } from '../fleets/rollout-wait.js';
import type { FleetTraffic } from './fleet-traffic.js';

export interface SoakOptions {
  batch: number;
  /** the targets on the new release */
  ids: string[];
  /** the targets still serving the old release: the error-rate baseline (none: the baseline is 0) */
  others: string[];
  manifestSha256: string;
  soakMs: number;
  maxErrorRate: number | null;
  traffic?: FleetTraffic | undefined;
  alarms?: AlarmWatch | undefined;
  hub: Pick<AgentHub, 'get'>;
  /** how often the instances, the balancer and the alarms are looked at (default 250 ms) */
  pollMs?: number;
  /** true once the controller is stopping: the soak ends at once, passed (the next controller soaks again) */
  stopped?: () => boolean;
}

export interface Soaked {
  result: SoakResult;
  /** KILN_SOAK_FAILED (a crash, a failed check) or KILN_ERROR_RATE (5xx over the limit, an alarm) */
  error?: KilnError;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref?.());

/**
 * Watches a batch (or a new group) for `soakMs`: each instance must stay connected, running the
 * release and healthy, and healthy in the balancer; no alarm may fire. At the end, the balancer's
 * 5xx share for the new targets over the window must not exceed the old targets' by more than
 * `maxErrorRate` — a real signal read from the balancer's counters, CloudWatch's equivalent locally.
 */
export async function soak(o: SoakOptions): Promise<Soaked> {
  const began = Date.now();
  const before = o.maxErrorRate !== null ? await o.traffic?.stats([...o.ids, ...o.others]) : null;
  const base: Omit<SoakResult, 'ms' | 'passed' | 'reason'> = { batch: o.batch, instances: o.ids, newTargets: null, oldTargets: null, alarms: [] };
  const fail = (code: 'KILN_SOAK_FAILED' | 'KILN_ERROR_RATE', reason: string, extra: Partial<SoakResult> = {}): Soaked => ({
    result: { ...base, ...extra, ms: Date.now() - began, passed: false, reason },
    error: new KilnError(code, reason),
  });
  while (Date.now() - began < o.soakMs && !o.stopped?.()) {
    for (const id of o.ids) {
      const inst = o.hub.get(id);
      if (!inst?.connected) return fail('KILN_SOAK_FAILED', `${id} lost its agent's connection during the soak`);
      if (!healthyOn(inst.report, o.manifestSha256)) {
        const e = inst.report?.lastError;
        return fail('KILN_SOAK_FAILED', `${id} stopped being healthy on the release during the soak${inst.report?.service.active === false ? ' (its app is not running)' : ''}${e ? ` (${e.code}: ${e.message})` : ''}`);
      }
    }
    const health = await o.traffic?.health(o.ids);
    const sick = o.ids.filter((id) => health && health.get(id)?.state !== 'healthy');
    if (sick.length) return fail('KILN_SOAK_FAILED', `the balancer stopped seeing ${sick.map((id) => `${id} (${health!.get(id)?.reason ?? health!.get(id)?.state ?? 'unknown'})`).join(', ')} as healthy during the soak`);
    const firing = (await o.alarms?.firing()) ?? [];
    if (firing.length) return fail('KILN_ERROR_RATE', `CloudWatch alarm(s) fired during the soak: ${firing.join(', ')}`, { alarms: firing });
    await sleep(Math.min(o.pollMs ?? 250, Math.max(1, o.soakMs - (Date.now() - began))));
  }
  if (o.maxErrorRate === null || !before) return { result: { ...base, ms: Date.now() - began, passed: true, reason: null } };
  const after = (await o.traffic?.stats([...o.ids, ...o.others])) ?? before;
  const newTargets = delta(before, after, o.ids);
  const oldTargets = o.others.length ? delta(before, after, o.others) : null;
  const rate = (c: { requests: number; errors5xx: number } | null) => (c && c.requests > 0 ? c.errors5xx / c.requests : 0);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const over = rate(newTargets) - rate(oldTargets);
  if (newTargets.requests > 0 && over > o.maxErrorRate) {
    return fail(
      'KILN_ERROR_RATE',
      `the new targets answered ${newTargets.errors5xx} of ${newTargets.requests} requests with 5xx (${pct(rate(newTargets))}) during the ${o.soakMs} ms soak, ${oldTargets ? `the old ones ${pct(rate(oldTargets))}` : 'with no old targets to compare with'}: over --max-error-rate ${o.maxErrorRate}`,
      { newTargets, oldTargets },
    );
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
    // a counter that went down was reset (a balancer reload): count from zero
    requests += a.requests >= (b?.requests ?? 0) ? a.requests - (b?.requests ?? 0) : a.requests;
    errors5xx += a.errors5xx >= (b?.errors5xx ?? 0) ? a.errors5xx - (b?.errors5xx ?? 0) : a.errors5xx;
  }
  return { requests, errors5xx };
}
