import { setTimeout as sleep } from 'node:timers/promises';
import { isKilnError, isSameProcess, type Logger } from '@kiln/shared';
import { runtimePid } from './haproxy-runtime.js';

/** A process by pid and start time: a pid reused by another program is never taken for it. */
export interface ProcessRef {
  pid: number;
  start: string | null;
}

export interface HaproxyWatchdogOptions {
  /** the process serving now (a reload replaces it) */
  current: () => ProcessRef;
  /** the pid HAProxy's owner file names now; undefined once it is removed (close, `kiln down`) */
  ownerPid: () => Promise<number | undefined>;
  socketPath: string;
  /** the line reloads and runtime commands wait in: a check never sees half a reload */
  serial: <T>(fn: () => Promise<T>) => Promise<T>;
  /** starts a new HAProxy with the registered servers, the way a fresh start does */
  relaunch: () => Promise<void>;
  log: Logger;
}

export interface HaproxyWatchdog {
  /** no check starts from now on (one already waiting in the line returns at once) */
  stop(): void;
}

// A dead HAProxy is noticed within this long; a check is one /proc read while it runs.
const CHECK_MS = 2_000;
// `kiln down` stops HAProxy, then removes its files within milliseconds: an end seen in between is no crash.
const CONFIRM_MS = 500;
// A HAProxy that runs answers on its socket in milliseconds.
const ANSWER_MS = 1_000;

/**
 * Starts HAProxy again when it died (killed, crashed): without it the fleets' endpoints refuse every
 * request until the controller restarts. A process ended on purpose (its files removed) or taken over
 * by a later start on the same directory is left alone, and no longer watched.
 */
export function watchHaproxy(o: HaproxyWatchdogOptions): HaproxyWatchdog {
  let stopped = false;
  let queued = false;
  let reported: number | undefined;

  const stop = () => {
    stopped = true;
    clearInterval(timer);
  };

  /** Why a process that ended is not this start's to replace; undefined when it crashed. */
  async function notOurs(gone: ProcessRef): Promise<string | undefined> {
    const owner = await o.ownerPid();
    if (owner === undefined) return 'its files are removed: it was stopped on purpose';
    if (owner !== gone.pid) return `a later start on its directory took it over (pid ${owner})`;
    // A takeover binds the socket before it stops the old process, and records itself only after.
    const answering = await runtimePid(o.socketPath, { timeoutMs: ANSWER_MS }).catch((err: unknown) => {
      if (isKilnError(err, 'KILN_BALANCER_FAILED')) return undefined; // nothing answers: it crashed
      throw err;
    });
    if (answering !== undefined && answering !== gone.pid) return `pid ${answering} answers on its socket`;
    return undefined;
  }

  async function check(): Promise<void> {
    const me = o.current();
    if (stopped || isSameProcess(me.pid, me.start)) return;
    await sleep(CONFIRM_MS);
    const why = await notOurs(me);
    if (stopped) return;
    if (why) {
      stop();
      o.log.info({ pid: me.pid }, `HAProxy ended and ${why}: no longer watched`);
      return;
    }
    if (reported !== me.pid) o.log.warn({ pid: me.pid }, 'HAProxy is gone: starting a new one with the registered servers');
    reported = me.pid;
    try {
      await o.relaunch();
    } catch (err) {
      o.log.error({ err, pid: me.pid }, `HAProxy could not be started again: trying again in ${CHECK_MS} ms`);
    }
  }

  const timer = setInterval(() => {
    // One check in the line at a time: a slow relaunch must not queue a check per tick behind it.
    if (stopped || queued) return;
    queued = true;
    o.serial(check)
      .catch((err: unknown) => o.log.error({ err }, 'checking on HAProxy failed'))
      .finally(() => {
        queued = false;
      });
  }, CHECK_MS);
  timer.unref();
  return { stop };
}
