import { isPollTimeout, KilnError, type Logger, pollUntil } from '@kiln/shared';
import type { Balancer, BalancerWait, Target, TargetHealth, TargetState, TargetStats } from './balancer.js';
import { HAPROXY_NAME, SERVER_CHECK, type ServerEntry } from './haproxy-config.js';
import { backendStats, runtimeCommand, runtimeExpect, runtimeRefused, type StatRow } from './haproxy-runtime.js';

/** What a fleet's balancer needs from the HAProxy that runs it (haproxy-process.ts). */
export interface HaproxyBackend {
  fleet: string;
  endpoint: string;
  socketPath: string;
  /** kiln's record of the servers it put in this backend: a reload writes them into the new config */
  servers: Map<string, ServerEntry>;
  /** runs runtime commands one at a time; a reload takes its turn in the same line, so it never sees half an operation */
  serial: <T>(fn: () => Promise<T>) => Promise<T>;
  /** counters of servers from the processes a reload replaced (a new process counts from 0) */
  carried: Map<string, TargetStats>;
  /** whether a process replaced by a reload may still serve requests it took before it */
  oldProcessesServing: () => boolean;
  log: Logger;
}

// Checks are polled this often: HAProxy checks a down server every 250 ms (SERVER_CHECK), so this adds at most ~50 ms.
const POLL_MS = 50;
// Once the drain time passes, the remaining sessions are cut: removing the servers then takes milliseconds.
const REMOVE_MS = 5_000;

const checkPassed = (r: StatRow) => /^L[4-7]OK$/.test(r.checkStatus);

/** TargetState from HAProxy's status column and last check; `reason` keeps HAProxy's words. */
export function targetHealth(row: StatRow | undefined): TargetHealth {
  if (!row) return { state: 'unused', reason: 'not in the backend' };
  const check = row.checkStatus ? ` (check ${row.checkStatus}${row.lastCheck ? `: ${row.lastCheck}` : ''})` : '';
  const reason = `${row.status}${check}`;
  const state = ((): TargetState => {
    if (row.status.startsWith('MAINT')) return 'unused';
    // A transition shows as a suffix: "DRAIN 1/2", "UP 1/2", "DOWN 1/2".
    if (row.status.startsWith('DRAIN') || row.status.startsWith('NOLB')) return 'draining';
    if (row.status === 'no check') return 'initial';
    // A server leaving maintenance is UP before any check ran on it (INI): not proven yet. One UP whose
    // last check failed ("UP 1/2") is still in rotation: HAProxy takes it out only after `fall` misses,
    // and one slow check on a busy machine is no reason to fail a soak.
    if (row.status.startsWith('UP')) return row.checkStatus === 'INI' ? 'initial' : 'healthy';
    return 'unhealthy';
  })();
  return { state, reason };
}

/** `http://HOST:PORT[/]` → `HOST:PORT`, the form `add server` takes. */
function hostPort(t: Target, fleet: string): string {
  let url: URL | undefined;
  try {
    url = t.address ? new URL(t.address) : undefined;
  } catch (err) {
    if (!(err instanceof TypeError)) throw err; // else not a URL: said below
  }
  if (!url || url.protocol !== 'http:' || !url.port) {
    throw new KilnError('KILN_BALANCER_FAILED', `target ${t.id} of fleet ${fleet} needs an address http://HOST:PORT for HAProxy, not ${JSON.stringify(t.address ?? null)}`);
  }
  return `${url.hostname}:${url.port}`;
}

function checkId(id: string, fleet: string): void {
  if (!HAPROXY_NAME.test(id)) throw new KilnError('KILN_BALANCER_FAILED', `target id ${JSON.stringify(id)} of fleet ${fleet} cannot be an HAProxy server name (letters, digits, "_.:-")`);
}

export function createHaproxyBalancer(b: HaproxyBackend): Balancer {
  const log = b.log.child({ fleet: b.fleet });
  const ref = (id: string) => `${b.fleet}/${id}`;
  const rows = async () => new Map((await backendStats(b.socketPath, b.fleet)).map((r) => [r.svname, r]));
  const describe = (ids: string[], seen: Map<string, StatRow>) => ids.map((id) => `${id}: ${targetHealth(seen.get(id)).reason}`).join('; ');

  /** `set server FLEET/ID state …`; false when HAProxy has no such server (it is out already). */
  async function setState(id: string, state: 'ready' | 'drain' | 'maint'): Promise<boolean> {
    const line = `set server ${ref(id)} state ${state}`;
    const answer = (await runtimeCommand(b.socketPath, line)).trim();
    if (answer === 'No such server.') return false;
    if (answer !== '') throw runtimeRefused(line, answer);
    const entry = b.servers.get(id);
    if (entry) entry.admin = state;
    return true;
  }

  /** Out of rotation and out of the backend; HAProxy deletes only a server in maintenance without connections. */
  async function remove(id: string): Promise<'removed' | 'busy'> {
    return b.serial(async () => {
      if (await setState(id, 'maint')) {
        const line = `del server ${ref(id)}`;
        const answer = (await runtimeCommand(b.socketPath, line)).trim();
        if (/still has connections/i.test(answer)) return 'busy';
        if (answer !== 'Server deleted.') throw runtimeRefused(line, answer);
      }
      b.servers.delete(id);
      b.carried.delete(ref(id));
      return 'removed';
    });
  }

  /** Removes each, retrying while HAProxy still holds connections to it, until `deadline`; answers those left. */
  async function removeAll(ids: string[], deadline: number): Promise<string[]> {
    let left = ids;
    for (;;) {
      const busy: string[] = [];
      for (const id of left) if ((await remove(id)) === 'busy') busy.push(id);
      if (busy.length === 0 || Date.now() >= deadline) return busy;
      left = busy;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  return {
    kind: 'haproxy',
    endpoint: b.endpoint,

    async register(targets, wait: BalancerWait) {
      const started = Date.now();
      const wanted = targets.map((t) => {
        checkId(t.id, b.fleet);
        return { id: t.id, hostPort: hostPort(t, b.fleet) };
      });
      for (const t of wanted) {
        // A known id at a new address starts over: HAProxy's last check result is the old address's.
        if (b.servers.has(t.id) && b.servers.get(t.id)!.hostPort !== t.hostPort && (await removeAll([t.id], Date.now() + REMOVE_MS)).length) {
          throw new KilnError('KILN_BALANCER_FAILED', `target ${t.id} of fleet ${b.fleet} moved to ${t.hostPort}, but HAProxy still holds connections to its old address: drain it first`);
        }
        if (b.servers.has(t.id)) continue;
        await b.serial(async () => {
          // A new server starts in maintenance: it is checked there, and only put in rotation below
          // once a check passed, so a server that never answers never takes a request.
          await runtimeExpect(b.socketPath, `add server ${ref(t.id)} ${t.hostPort} ${SERVER_CHECK}`, 'New server registered.');
          b.servers.set(t.id, { id: t.id, hostPort: t.hostPort, admin: 'maint' });
          await runtimeExpect(b.socketPath, `enable health ${ref(t.id)}`, '');
        });
      }
      const ids = wanted.map((t) => t.id);
      let seen = new Map<string, StatRow>();
      try {
        await pollUntil({
          timeoutMs: wait.timeoutMs,
          intervalMs: POLL_MS,
          ...(wait.signal ? { signal: wait.signal } : {}),
          check: async () => {
            seen = await rows();
            let all = true;
            for (const id of ids) {
              const row = seen.get(id);
              const entry = b.servers.get(id);
              if (entry && entry.admin !== 'ready' && row && checkPassed(row)) {
                await b.serial(() => setState(id, 'ready'));
                all = false; // read again: HAProxy says UP from now on
              } else if (targetHealth(row).state !== 'healthy') all = false;
            }
            return all;
          },
        });
      } catch (err) {
        // The ones not healthy go out again: a target that never became healthy takes no traffic.
        const failed = ids.filter((id) => targetHealth(seen.get(id)).state !== 'healthy');
        const left = await removeAll(failed, Date.now() + REMOVE_MS);
        if (left.length) log.warn({ targets: left }, 'could not remove unhealthy servers: HAProxy still holds connections to them');
        if (!isPollTimeout(err)) throw err;
        throw new KilnError(
          'KILN_BALANCER_TIMEOUT',
          `HAProxy did not see ${failed.join(', ')} of fleet ${b.fleet} healthy within ${wait.timeoutMs} ms (taken out again): ${describe(failed, seen)}. Check that the app listens on the address it was registered with`,
          { details: { targets: failed, haproxy: Object.fromEntries(failed.map((id) => [id, targetHealth(seen.get(id)).reason])) } },
        );
      }
      log.info({ targets: ids, ms: Date.now() - started }, 'servers healthy in HAProxy');
    },

    async drain(targets, wait) {
      const started = Date.now();
      const seen0 = await rows();
      // An id HAProxy does not have is out already.
      const ids = targets.map((t) => t.id).filter((id) => b.servers.has(id) || seen0.has(id));
      if (ids.length === 0) return;
      for (const id of ids) {
        await b.serial(() => setState(id, 'drain'));
      }
      const cutAfter = Math.min(wait.drainMs ?? 30_000, wait.timeoutMs);
      let seen = seen0;
      const drained = async () => {
        seen = await rows();
        return ids.every((id) => (seen.get(id)?.scur ?? 0) === 0) && !b.oldProcessesServing();
      };
      try {
        await pollUntil({ check: drained, timeoutMs: cutAfter, intervalMs: POLL_MS, ...(wait.signal ? { signal: wait.signal } : {}) });
      } catch (err) {
        if (!isPollTimeout(err)) throw err;
        const busy = ids.filter((id) => (seen.get(id)?.scur ?? 0) > 0);
        log.warn({ targets: busy, drainMs: cutAfter }, 'drain time passed: cutting the requests still in flight');
        for (const id of busy) await b.serial(() => runtimeExpect(b.socketPath, `shutdown sessions server ${ref(id)}`, ''));
      }
      const left = await removeAll(ids, Date.now() + REMOVE_MS);
      if (left.length) {
        const now = await rows();
        throw new KilnError('KILN_BALANCER_TIMEOUT', `HAProxy still holds connections to ${left.join(', ')} of fleet ${b.fleet} after the drain: ${describe(left, now)}`, {
          details: { targets: left },
        });
      }
      log.info({ targets: ids, ms: Date.now() - started }, 'servers drained and removed from HAProxy');
    },

    async health(ids) {
      const seen = await rows();
      return new Map(ids.map((id) => [id, targetHealth(seen.get(id))]));
    },

    async registered() {
      // backendStats asks for server rows only (type 4): the backend's own BACKEND row is not among them.
      return (await backendStats(b.socketPath, b.fleet)).map((r) => r.svname);
    },

    async stats(ids) {
      const seen = await rows();
      return new Map(
        ids.map((id): [string, TargetStats] => {
          const r = seen.get(id);
          const before = b.carried.get(ref(id)) ?? { requests: 0, errors5xx: 0, inFlight: 0 };
          const requests = r ? r.hrsp1xx + r.hrsp2xx + r.hrsp3xx + r.hrsp4xx + r.hrsp5xx + r.hrspOther : 0;
          return [id, { requests: before.requests + requests, errors5xx: before.errors5xx + (r?.hrsp5xx ?? 0), inFlight: r?.scur ?? 0 }];
        }),
      );
    },
  };
}
