import type { EC2Client, Filter, Tag } from '@aws-sdk/client-ec2';
import { KilnError, type Logger } from '@kiln/shared';
import type { Tags } from '../provider.js';

/** What every EC2 helper needs: one region's client and the provider's clock and poll period. */
export interface Ec2Context {
  client: EC2Client;
  region: string;
  log: Logger;
  now: () => number;
  pollMs: number;
}

/** The AWS error code of an SDK error (`InvalidAMIID.NotFound`, …). */
export function errorName(err: unknown): string {
  return typeof err === 'object' && err !== null && typeof (err as { name?: unknown }).name === 'string' ? (err as { name: string }).name : 'Error';
}

/**
 * Runs one SDK call of an AWS service (`ec2`, `elbv2`); any error but a KilnError or the caller's
 * abort becomes KILN_PROVIDER_FAILED naming the service and operation.
 */
export async function awsCall<T>(service: string, op: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KilnError) throw err;
    if (signal?.aborted) throw signal.reason;
    const message = err instanceof Error ? err.message : String(err);
    throw new KilnError('KILN_PROVIDER_FAILED', `${service} ${op} failed: ${errorName(err)}: ${message}`, { cause: err });
  }
}

export function ec2Call<T>(op: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  return awsCall('ec2', op, fn, signal);
}

/** Like ec2Call, but resolves `undefined` when the error is one of `tolerated` (a not-found that is no error here). */
export async function ec2CallTolerating<T>(op: string, tolerated: string[], fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await ec2Call(op, fn);
  } catch (err) {
    if (err instanceof KilnError && tolerated.includes(errorName(err.cause))) return undefined;
    throw err;
  }
}

export function toEc2Tags(tags: Tags): Tag[] {
  return Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
}

export function fromEc2Tags(tags: Tag[] | undefined): Tags {
  const out: Tags = {};
  for (const t of tags ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? '';
  return out;
}

export function tagFilters(tags: Tags): Filter[] {
  return Object.entries(tags).map(([k, v]) => ({ Name: `tag:${k}`, Values: [v] }));
}

export type Poll<T> = { done: true; value: T } | { done: false; stuck: string };

export interface WaitForOptions<T> {
  /** only its clock and poll period: the ELBv2 waits use it too */
  ctx: Pick<Ec2Context, 'now' | 'pollMs'>;
  /** absolute, in ctx.now() time */
  deadline: number;
  timeoutMs: number;
  /** "instances i-1, i-2 to be running": the timeout message starts with it */
  what: string;
  signal?: AbortSignal;
  /** one look; gets a signal that also fires at the deadline, so a hung call cannot outlive it */
  check: (signal: AbortSignal) => Promise<Poll<T>>;
}

/**
 * Polls until `check` says done, throws, or the deadline passes (KILN_PROVIDER_TIMEOUT naming what
 * was stuck where). An explicit loop rather than the SDK waiters: the deadline and the message are ours.
 */
export async function waitFor<T>(o: WaitForOptions<T>): Promise<T> {
  let stuck = 'not seen yet';
  const timeout = () => new KilnError('KILN_PROVIDER_TIMEOUT', `timed out after ${o.timeoutMs} ms waiting for ${o.what}: ${stuck}`);
  for (;;) {
    o.signal?.throwIfAborted();
    const left = o.deadline - o.ctx.now();
    if (left <= 0) throw timeout();
    const deadlineSignal = AbortSignal.timeout(left);
    const signal = o.signal ? AbortSignal.any([o.signal, deadlineSignal]) : deadlineSignal;
    let r: Poll<T>;
    try {
      // raced, not only passed down: the deadline holds even if a call ignores its signal
      r = await Promise.race([o.check(signal), rejectOnAbort(signal)]);
    } catch (err) {
      if (o.signal?.aborted) throw o.signal.reason;
      if (deadlineSignal.aborted) throw timeout();
      throw err;
    }
    if (r.done) return r.value;
    stuck = r.stuck;
    const wait = Math.min(o.ctx.pollMs, o.deadline - o.ctx.now());
    if (wait <= 0) throw timeout();
    await sleep(wait, o.signal);
  }
}

function rejectOnAbort(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    else signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
