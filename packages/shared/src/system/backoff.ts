export interface BackoffOptions {
  /** the wait before the first retry (attempt 0) */
  baseMs: number;
  /** the longest wait, however many attempts failed */
  capMs: number;
  /**
   * with it, the wait is drawn from the upper half of the window, so a thousand agents that lost
   * the same controller do not come back in the same millisecond; without it, the wait is the window
   */
  random?: () => number;
}

/** Exponential backoff, capped: attempt 0 waits about `baseMs`, each further attempt doubles it up to `capMs`. */
export function backoffDelay(attempt: number, opts: BackoffOptions): number {
  // Attempts past 30 count as 30: any cap is reached long before, and 2 ** 1024 is Infinity.
  const ceiling = Math.min(opts.capMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  return opts.random ? Math.round(ceiling / 2 + (opts.random() * ceiling) / 2) : ceiling;
}
