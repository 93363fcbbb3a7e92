import { access, constants, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { hasErrno, isKilnError, isPollTimeout, isSameProcess, KilnError, type Logger, peekJsonFile, pollUntil, processStart, writeFileAtomic } from '@kiln/shared';
import { freePort } from '../system/free-port.js';
import { runCommand } from '../system/run-command.js';
import { stopProcess } from '../system/stop-process.js';
import type { Balancer, LocalBalancer, TargetStats } from './balancer.js';
import { createHaproxyBalancer } from './haproxy-balancer.js';
import { HAPROXY_NAME, renderHaproxyConfig, type ServerEntry } from './haproxy-config.js';
import { checkFrontendPorts } from './haproxy-ports.js';
import { allServerStats, runtimePid, type StatRow } from './haproxy-runtime.js';
import { type ProcessRef, watchHaproxy } from './haproxy-watchdog.js';

/** kiln's local balancer: one HAProxy process (replaced seamlessly on a reload), a frontend and backend per fleet. */
export interface Haproxy extends LocalBalancer {
  /** `http://127.0.0.1:PORT/` of the fleet's frontend, undefined when it has none */
  endpoint(fleet: string): string | undefined;
  /** the HAProxy process serving now (a reload replaces it) */
  readonly pid: number;
  /** stops HAProxy; the fleets' ports stay recorded for the next start */
  close(): Promise<void>;
}

export interface StartHaproxyOptions {
  /** its config, socket, pid file and frontends.json (fleet → port) */
  dir: string;
  log: Logger;
  /** the haproxy program (findHaproxy); `haproxy` on PATH when not given */
  binary?: string;
}

const FleetPorts = z.record(z.string(), z.number().int().min(1).max(65535));
const Owner: z.ZodType<ProcessRef> = z.object({ pid: z.number().int().positive(), start: z.string().nullable() });

// A UNIX socket path longer than this cannot be bound (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH = 107;
// HAProxy binds its listeners before it returns from -D: answering on the socket takes milliseconds.
const ANSWER_MS = 5_000;
// SIGUSR1 lets requests in flight finish; past this the process is ended with SIGTERM, then SIGKILL.
const SOFT_STOP_MS = 3_000;

/** What a HAProxy of kiln's keeps in its directory. */
const haproxyFiles = (dir: string) => ({
  config: path.join(dir, 'haproxy.cfg'),
  socket: path.join(dir, 'haproxy.sock'),
  pid: path.join(dir, 'haproxy.pid'),
  // the pid file's process with its start time: a pid reused by another program is never signalled
  owner: path.join(dir, 'haproxy.json'),
  ports: path.join(dir, 'frontends.json'),
});

/** Where `haproxy` is: env.PATH, then /usr/sbin and /sbin (Debian installs it there, off a normal user's PATH). */
export async function findHaproxy(env: Record<string, string | undefined>): Promise<string | null> {
  const dirs = [...(env.PATH ?? '').split(path.delimiter).filter(Boolean), '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    const file = path.join(dir, 'haproxy');
    try {
      await access(file, constants.X_OK);
      return file;
    } catch (err) {
      if (!hasErrno(err, 'ENOENT', 'EACCES', 'ENOTDIR')) throw err; // else not here
    }
  }
  return null;
}

/**
 * Starts HAProxy for the fleets recorded in `dir`, or takes over the one still running from an
 * earlier start (a controller restart): the new process receives the old one's listening sockets,
 * so the fleets' frontends never refuse a connection.
 */
export async function startHaproxy(o: StartHaproxyOptions): Promise<Haproxy> {
  const log = o.log.child({ module: 'haproxy' });
  const binary = o.binary ?? 'haproxy';
  const files = haproxyFiles(o.dir);
  if (Buffer.byteLength(files.socket) > MAX_SOCKET_PATH) {
    throw new KilnError('KILN_BALANCER_FAILED', `HAProxy's socket ${files.socket} is longer than a UNIX socket path may be (${MAX_SOCKET_PATH} bytes): use a shorter directory`);
  }
  await mkdir(o.dir, { recursive: true, mode: 0o700 });
  const ports = new Map(Object.entries((await peekJsonFile(files.ports, FleetPorts)) ?? {}));
  const servers = new Map<string, Map<string, ServerEntry>>([...ports.keys()].map((f) => [f, new Map()]));
  const carried = new Map<string, TargetStats>();
  const oldProcesses: ProcessRef[] = [];
  let current: ProcessRef | undefined;
  let tail: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };

  const config = (fleets: Map<string, number>) =>
    renderHaproxyConfig({
      socketPath: files.socket,
      fleets: [...fleets].map(([name, port]) => ({ name, port, servers: [...(servers.get(name)?.values() ?? [])] })),
    });

  /**
   * Runs haproxy for `fleets`. With `previous` still running, the new process takes over its sockets
   * and stops it; `added` are the fleets whose ports it does not hold. Otherwise a fresh start.
   */
  async function launch(fleets: Map<string, number>, previous: ProcessRef | undefined, added: Iterable<string> = []): Promise<void> {
    const started = Date.now();
    // -sf signals a pid: a HAProxy that died may have left its pid to an unrelated program.
    const replaced = previous && isSameProcess(previous.pid, previous.start) ? previous : undefined;
    if (previous && !replaced) log.warn({ pid: previous.pid }, 'HAProxy is gone: starting a new one with the registered servers instead of a reload');
    // The ports of a process taken over come with it (-x); every other one must be free.
    await checkFrontendPorts(fleets, replaced ? added : fleets.keys(), files.ports);
    // A dead process's counters are lost with it.
    if (replaced) await carryCounters();
    await writeFileAtomic(files.config, config(fleets));
    const takeover = replaced ? ['-sf', String(replaced.pid), '-x', files.socket] : [];
    let result;
    try {
      result = await runCommand(binary, ['-f', files.config, '-p', files.pid, '-D', ...takeover], { timeoutMs: 30_000 });
    } catch (err) {
      if (!hasErrno(err, 'ENOENT', 'EACCES')) throw err;
      throw new KilnError('KILN_BALANCER_FAILED', `cannot run HAProxy (${binary}): install it (apt-get install haproxy) or give its path`, { cause: err });
    }
    if (result.code !== 0) {
      const said = result.stderr.trim().split('\n').slice(-5).join(' | ');
      const bind = /cannot bind socket[^[]*\[127\.0\.0\.1:(\d+)\]/.exec(result.stderr);
      const fleet = bind ? [...fleets].find(([, p]) => String(p) === bind[1])?.[0] : undefined;
      if (bind) throw new KilnError('KILN_PORT_IN_USE', `port ${bind[1]}${fleet ? ` of fleet ${fleet}'s HAProxy frontend` : ''} is taken by another process: ${said}`);
      throw new KilnError('KILN_BALANCER_FAILED', `HAProxy could not start (exit ${result.code ?? result.signal}; config ${files.config}): ${said}`);
    }
    const pid = Number((await readFile(files.pid, 'utf8')).trim());
    const next = { pid, start: processStart(pid) };
    await writeFileAtomic(files.owner, JSON.stringify(next));
    // Until the new process answers, the socket may still be the old one's.
    await pollUntil({
      timeoutMs: ANSWER_MS,
      check: async () => (await runtimePid(files.socket).catch((err) => (isKilnError(err, 'KILN_BALANCER_FAILED') ? undefined : Promise.reject(err)))) === pid,
      timeoutError: () => new KilnError('KILN_BALANCER_FAILED', `HAProxy (pid ${pid}) did not answer on ${files.socket} within ${ANSWER_MS} ms after it started: see its config ${files.config}`),
    });
    // The replaced process finishes its requests and exits on its own (-sf): kept only while it may still serve.
    const serving = oldProcesses.filter((p) => isSameProcess(p.pid, p.start));
    oldProcesses.splice(0, oldProcesses.length, ...serving, ...(replaced ? [replaced] : []));
    current = next;
    log.info({ pid, replaced: replaced?.pid, ms: Date.now() - started }, replaced ? 'HAProxy reloaded' : 'HAProxy started');
  }

  /**
   * The servers of a process from an earlier start that still runs, to take it over with them
   * (kiln's record of them was in the controller that started it); undefined when it does not
   * answer: then it is stopped, and a new one starts with no servers.
   */
  async function serversOf(earlier: ProcessRef): Promise<StatRow[] | undefined> {
    try {
      return await allServerStats(files.socket);
    } catch (err) {
      if (!isKilnError(err, 'KILN_BALANCER_FAILED')) throw err;
      log.warn({ err, pid: earlier.pid }, 'the HAProxy of an earlier start does not answer on its socket: stopping it');
      await softStop(earlier, log);
      return undefined;
    }
  }

  /** Counters of the process about to be replaced, carried over: a reload must not look like a drop in traffic. */
  async function carryCounters(): Promise<void> {
    for (const r of await allServerStats(files.socket)) {
      if (!servers.get(r.pxname)?.has(r.svname)) continue;
      const key = `${r.pxname}/${r.svname}`;
      const before = carried.get(key) ?? { requests: 0, errors5xx: 0, inFlight: 0 };
      const requests = r.hrsp1xx + r.hrsp2xx + r.hrsp3xx + r.hrsp4xx + r.hrsp5xx + r.hrspOther;
      carried.set(key, { requests: before.requests + requests, errors5xx: before.errors5xx + r.hrsp5xx, inFlight: 0 });
    }
  }

  const earlier = await peekJsonFile(files.owner, Owner);
  const earlierServers = earlier && isSameProcess(earlier.pid, earlier.start) ? await serversOf(earlier) : undefined;
  if (earlier && earlierServers) {
    for (const r of earlierServers) {
      const admin = r.status.startsWith('MAINT') ? 'maint' : r.status.startsWith('DRAIN') ? 'drain' : 'ready';
      servers.get(r.pxname)?.set(r.svname, { id: r.svname, hostPort: r.addr, admin });
    }
    current = earlier;
    await launch(ports, earlier);
  } else {
    await launch(ports, undefined);
  }
  const watchdog = watchHaproxy({
    current: () => current!,
    ownerPid: async () => (await peekJsonFile(files.owner, Owner))?.pid,
    socketPath: files.socket,
    serial,
    relaunch: () => launch(ports, undefined),
    log,
  });

  const endpoint = (fleet: string) => (ports.has(fleet) ? `http://127.0.0.1:${ports.get(fleet)}/` : undefined);

  return {
    get pid() {
      return current!.pid;
    },
    endpoint,

    async setFleets(names) {
      for (const name of names) if (!HAPROXY_NAME.test(name)) throw new Error(`fleet name ${JSON.stringify(name)} cannot be an HAProxy proxy name`);
      // Behind every runtime command already queued: a server being added is in the record the config is written from.
      return serial(async () => {
        const added = names.filter((n) => !ports.has(n));
        const removed = [...ports.keys()].filter((n) => !names.includes(n));
        if (added.length === 0 && removed.length === 0) return;
        const next = new Map([...ports].filter(([n]) => names.includes(n)));
        for (const name of added) next.set(name, await freePort());
        try {
          await launch(next, current, added);
        } catch (err) {
          // The old process (or, when it died, the one the watchdog starts) serves the old fleets: so does the config file.
          await writeFileAtomic(files.config, config(ports));
          throw err;
        }
        for (const name of removed) {
          servers.delete(name);
          for (const key of carried.keys()) if (key.startsWith(`${name}/`)) carried.delete(key);
        }
        for (const name of added) servers.set(name, new Map());
        ports.clear();
        for (const [name, port] of next) ports.set(name, port);
        await writeFileAtomic(files.ports, `${JSON.stringify(Object.fromEntries(ports), null, 2)}\n`);
        log.info({ added, removed, ports: Object.fromEntries(ports) }, 'HAProxy frontends changed');
      });
    },

    balancer(fleet): Balancer {
      const url = endpoint(fleet);
      if (!url) throw new KilnError('KILN_BALANCER_FAILED', `fleet ${fleet} has no HAProxy frontend (it is not among the fleets given to setFleets)`);
      return createHaproxyBalancer({
        fleet,
        endpoint: url,
        socketPath: files.socket,
        // The fleet's map is looked up on each use: a reload keeps it, a removed fleet has none.
        get servers() {
          return servers.get(fleet) ?? new Map<string, ServerEntry>();
        },
        serial,
        carried,
        oldProcessesServing: () => oldProcesses.some((p) => isSameProcess(p.pid, p.start)),
        log,
      });
    },

    close() {
      watchdog.stop();
      return serial(async () => {
        const me = current!;
        await Promise.all([me, ...oldProcesses].map((p) => softStop(p, log)));
        // A later start (another controller) may have taken this HAProxy over: its files are not ours to remove then.
        const owner = await peekJsonFile(files.owner, Owner);
        if (owner?.pid === me.pid) await Promise.all([files.socket, files.pid, files.owner].map((f) => rm(f, { force: true })));
        log.info({ pid: me.pid }, 'HAProxy stopped');
      });
    },
  };
}

/** SIGUSR1 (HAProxy's soft stop: requests in flight finish), then SIGTERM and SIGKILL past SOFT_STOP_MS. */
async function softStop(p: ProcessRef, log: Logger): Promise<void> {
  if (!isSameProcess(p.pid, p.start)) return;
  try {
    process.kill(p.pid, 'SIGUSR1');
    await pollUntil({ check: () => !isSameProcess(p.pid, p.start), timeoutMs: SOFT_STOP_MS });
    return;
  } catch (err) {
    if (hasErrno(err, 'ESRCH')) return;
    if (!isPollTimeout(err)) throw err;
  }
  log.warn({ pid: p.pid }, `HAProxy still serving ${SOFT_STOP_MS} ms after a soft stop: ending it`);
  await stopProcess(p.pid, p.start, 2_000);
}

/**
 * Stops the HAProxy a start in `dir` left running (`kiln down`): its pid and start time from the
 * owner file, so a reused pid is never signalled. Its pid, or null when none ran.
 */
export async function stopHaproxy(dir: string, log: Logger): Promise<number | null> {
  const files = haproxyFiles(dir);
  const owner = await peekJsonFile(files.owner, Owner);
  if (!owner || !isSameProcess(owner.pid, owner.start)) return null;
  await softStop(owner, log.child({ module: 'haproxy' }));
  await Promise.all([files.socket, files.pid, files.owner].map((f) => rm(f, { force: true })));
  return owner.pid;
}
