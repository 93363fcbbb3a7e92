import { setTimeout as sleep } from 'node:timers/promises';

// Both carry the error first; typed as one event so listeners can be saved and put back generically.
const EVENTS = ['uncaughtException', 'unhandledRejection'] as Array<'uncaughtException'>;

/**
 * Runs `fn` with the process's uncaught-exception and unhandled-rejection handlers (the test
 * runner's) swapped for a collector, so that a test can assert that code under test never throws
 * out of band — an agent would crash on it. Waits `settleMs` more before restoring the handlers,
 * for timers the code may have left behind.
 */
export async function collectUncaught<T>(fn: () => Promise<T>, settleMs = 0): Promise<{ value: T; uncaught: unknown[] }> {
  const uncaught: unknown[] = [];
  const collect = (err: unknown) => void uncaught.push(err);
  const saved = EVENTS.map((e) => [e, process.listeners(e)] as const);
  for (const e of EVENTS) {
    process.removeAllListeners(e);
    process.on(e, collect);
  }
  try {
    const value = await fn();
    if (settleMs) await sleep(settleMs);
    return { value, uncaught };
  } finally {
    for (const [e, listeners] of saved) {
      process.removeListener(e, collect);
      for (const l of listeners) process.on(e, l);
    }
  }
}

/** `p`'s value, or `timedOut` when it takes longer than `ms` (it keeps running; its rejection is ignored). */
export async function within<T, U>(p: Promise<T>, ms: number, timedOut: U): Promise<T | U> {
  p.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<U>((resolve) => (timer = setTimeout(() => resolve(timedOut), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Short text for an uncaught error in an assertion message. */
export const describeUncaught = (errs: unknown[]) => errs.map((e) => `${(e as { code?: string }).code ?? ''} ${(e as Error).message ?? String(e)}`.trim());
