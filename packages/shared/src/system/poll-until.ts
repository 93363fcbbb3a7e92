import { setTimeout as sleep } from 'node:timers/promises';

/** What a check answers while the condition does not hold yet. */
type NotYet = false | undefined | null;

export interface PollOptions<T> {
  /** a value when the condition holds, or false / undefined / null to look again after `intervalMs` */
  check: () => T | NotYet | Promise<T | NotYet>;
  /** how long to keep looking (Infinity: until the check holds or the signal aborts) */
  timeoutMs: number;
  /** the pause between two checks; 25 ms when not given */
  intervalMs?: number;
  signal?: AbortSignal;
  /**
   * what is thrown when `timeoutMs` passes (it may look at what the last check saw); without it, an
   * Error named 'TimeoutError' (as the platform names one), which isPollTimeout recognises
   */
  timeoutError?: () => Error | Promise<Error>;
}

/**
 * Checks until `check` answers a value, and resolves with it. The check runs at once, then every
 * `intervalMs` (the time a check takes comes on top); past `timeoutMs` it throws `timeoutError`;
 * an aborted signal throws its reason. A check that throws ends the wait with its error.
 */
export async function pollUntil<T>(o: PollOptions<T>): Promise<Exclude<T, NotYet>> {
  const deadline = Date.now() + o.timeoutMs;
  for (;;) {
    o.signal?.throwIfAborted();
    const value = await o.check();
    if (value !== false && value !== undefined && value !== null) return value as Exclude<T, NotYet>;
    if (Date.now() >= deadline) throw o.timeoutError ? await o.timeoutError() : pollTimeout(o.timeoutMs);
    try {
      await sleep(o.intervalMs ?? 25, undefined, o.signal ? { signal: o.signal } : undefined);
    } catch (err) {
      // timers/promises wraps the reason in its own AbortError: the caller's reason is what it expects
      o.signal?.throwIfAborted();
      throw err;
    }
  }
}

function pollTimeout(timeoutMs: number): Error {
  const err = new Error(`the condition did not hold within ${timeoutMs} ms`);
  err.name = 'TimeoutError';
  return err;
}

/**
 * Whether `err` says time ran out: pollUntil's own timeout, or a signal from AbortSignal.timeout
 * (both are named 'TimeoutError'), for a caller to whom running out of time is an answer.
 */
export const isPollTimeout = (err: unknown): boolean => (err as Error | null)?.name === 'TimeoutError';
