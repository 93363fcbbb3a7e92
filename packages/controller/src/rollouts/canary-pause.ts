import { pollUntil, type KilnError } from '@kiln/shared';
import type { Deployment } from '../fleets/fleet-model.js';
import { servingProblem, watchInterval, type Watched } from './soak.js';

/** What a rollout watches its canary through, and its clock and stop flag (both rollout contexts have them). */
export type PauseContext = Omit<Watched, 'ids' | 'manifestSha256'> & { now: () => Date; stopped?: (() => boolean) | undefined };

export type PauseOutcome = 'promote' | 'abort' | 'cancel' | 'stopped' | { unhealthy: KilnError };

export interface PauseOptions {
  record: Deployment;
  /** writes the record (the API shows `paused` from it) */
  save: () => Promise<void>;
  /** the rollout's context: a stopping controller leaves the record paused for the next one */
  from: PauseContext;
  /** the canary's instances that serve, watched while paused (they must keep serving the release) */
  canary: string[];
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
  const { now, stopped, ...watch } = o.from;
  const canary: Watched = { ...watch, ids: o.canary, manifestSha256: r.release.manifestSha256 };
  const decided = (): PauseOutcome | undefined => {
    if (r.abortRequested) return 'abort';
    if (r.cancelRequested) return 'cancel';
    if (r.promoteRequested) return 'promote';
    if (o.mayPromoteItself && r.canaryWaitMs !== null && r.pausedAt && now().getTime() - Date.parse(r.pausedAt) >= r.canaryWaitMs) {
      r.promoteRequested = true;
      return 'promote';
    }
    return undefined;
  };
  let outcome = decided();
  if (!outcome) {
    r.state = 'paused';
    r.pausedAt ??= now().toISOString();
    await o.save();
    outcome = await pollUntil<PauseOutcome>({
      check: async () => {
        if (stopped?.()) return 'stopped';
        const unhealthy = await servingProblem(canary);
        return unhealthy ? { unhealthy } : decided();
      },
      timeoutMs: Infinity,
      intervalMs: watchInterval(canary.traffic, canary.alarms),
    });
    if (outcome === 'stopped') return outcome;
  }
  r.state = 'running';
  await o.save();
  return outcome;
}
