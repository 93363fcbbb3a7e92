import type { Deployment } from '../fleets/fleet-model.js';

export type PauseOutcome = 'promote' | 'abort' | 'cancel' | 'stopped';

export interface PauseOptions {
  record: Deployment;
  /** writes the record (the API shows `paused` from it) */
  save: () => Promise<void>;
  now: () => Date;
  /** true once the controller is stopping: the record stays paused for the next controller */
  stopped?: () => boolean;
  /** how often the record's requests are looked at (default 200 ms) */
  pollMs?: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref?.());

/**
 * After the canary: the deployment is `paused` until `kiln deployments promote` (or, with
 * --canary-wait, that long after pausing), `abort` or `cancel`. Re-entrant: a record resumed by a
 * restarted controller keeps its pausedAt, so --canary-wait counts from the first pause.
 */
export async function pauseAfterCanary(o: PauseOptions): Promise<PauseOutcome> {
  const r = o.record;
  const decided = (): PauseOutcome | undefined => {
    if (r.abortRequested) return 'abort';
    if (r.cancelRequested) return 'cancel';
    if (r.promoteRequested) return 'promote';
    if (r.canaryWaitMs !== null && r.pausedAt && o.now().getTime() - Date.parse(r.pausedAt) >= r.canaryWaitMs) {
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
    while (!(outcome = decided())) {
      if (o.stopped?.()) return 'stopped';
      await sleep(o.pollMs ?? 200);
    }
  }
  r.state = 'running';
  await o.save();
  return outcome;
}
