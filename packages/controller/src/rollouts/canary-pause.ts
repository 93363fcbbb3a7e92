import { pollUntil, type KilnError } from '@kiln/shared';
import type { Deployment } from '../fleets/fleet-model.js';
import { servingProblem, watchInterval, type Watched } from './soak.js';

export type PauseOutcome = 'promote' | 'abort' | 'cancel' | 'stopped' | { unhealthy: KilnError };

export interface PauseOptions {
  record: Deployment;
  /** writes the record (the API shows `paused` from it) */
  save: () => Promise<void>;
  now: () => Date;
  /** true once the controller is stopping: the record stays paused for the next controller */
  stopped?: (() => boolean) | undefined;
  /** the canary's instances that serve, watched while paused (it must keep serving) */
  canary: Watched;
  /** whether --canary-wait may promote: nothing of the canary failed (else only an operator decides) */
  mayPromoteItself: boolean;
}

/**
 * After the canary: the deployment is `paused` until `kiln deployments promote` (or, with
 * --canary-wait and nothing failed, that long after pausing), `abort` or `cancel`; a canary that
 * stops serving meanwhile ends the pause as unhealthy. Re-entrant: a record resumed by a restarted
 * controller keeps its pausedAt, so --canary-wait counts from the first pause.
 */
export async function pauseAfterCanary(o: PauseOptions): Promise<PauseOutcome> {
  const r = o.record;
  const decided = (): PauseOutcome | undefined => {
    if (r.abortRequested) return 'abort';
    if (r.cancelRequested) return 'cancel';
    if (r.promoteRequested) return 'promote';
    if (o.mayPromoteItself && r.canaryWaitMs !== null && r.pausedAt && o.now().getTime() - Date.parse(r.pausedAt) >= r.canaryWaitMs) {
      r.promoteRequested = true;
      return 'promote';
    }
    return undefined;
  };
  let outcome = decided();
  if (!outcome) {
    r.state = 'paused';
    r.pausedAt ??= o.now().toISOString();
    await o.save();
    outcome = await pollUntil<PauseOutcome>({
      check: async () => {
        if (o.stopped?.()) return 'stopped';
        const unhealthy = await servingProblem(o.canary);
        return unhealthy ? { unhealthy } : decided();
      },
      timeoutMs: Infinity,
      intervalMs: watchInterval(o.canary.traffic, o.canary.alarms),
    });
    if (outcome === 'stopped') return outcome;
  }
  r.state = 'running';
  await o.save();
  return outcome;
}
