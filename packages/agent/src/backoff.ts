/**
 * Exponential backoff with jitter, capped: attempt 0 waits about `baseMs`, each further attempt
 * doubles it up to `capMs`; the wait is drawn from the upper half of that window, so a thousand
 * agents that lost the same controller do not come back in the same millisecond.
 */
export function backoffDelay(attempt: number, opts: { baseMs: number; capMs: number; random: () => number }): number {
  const ceiling = Math.min(opts.capMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (opts.random() * ceiling) / 2);
}

/** A period with ±`spread` jitter (0.2 = ±20%). */
export function jittered(periodMs: number, random: () => number, spread = 0.2): number {
  return Math.round(periodMs * (1 - spread + 2 * spread * random()));
}
