import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { releaseProcesses, type Manifest } from '../release/release-schema.js';
import { waitHealthy } from '../service/health-check.js';
import type { ProcessStatus, ServiceManager } from '../service/service-manager.js';

/** A process without a health check of its own passes by staying up this long after its start. */
export const STAY_UP_MS = 1_000;
/** A process restarted this often during the gate has failed: no need to wait for the health timeout. */
const CRASH_RESTARTS = 3;
const TAIL = 20;

export interface AppHealthOptions {
  service: ServiceManager;
  manifest: Manifest;
  releaseDir: string;
  /** the port the instance gave the main process */
  port?: number | undefined;
  /** when the processes were (re)started */
  startedAt: number;
}

/**
 * The health gate of a release: every process's own health check (the main one's on the instance's
 * port), every other process up for STAY_UP_MS, and none of them crashing meanwhile. A process that
 * crashes fails the gate with how it ended and its last lines, not with what the probe saw.
 */
export async function appHealthGate(o: AppHealthOptions): Promise<void> {
  const procs = releaseProcesses(o.manifest);
  const abort = new AbortController();
  const watcher = watchCrashes(o, abort.signal);
  try {
    await Promise.race([
      watcher,
      (async () => {
        for (const [name, p] of Object.entries(procs)) {
          if (p.health.type !== 'none') await waitHealthy({ health: p.health, service: p, port: name === 'web' ? o.port : p.port, cwd: o.releaseDir });
        }
        if (Object.keys(procs).length > 1) await sleep(Math.max(0, o.startedAt + STAY_UP_MS - Date.now()));
      })(),
    ]);
  } catch (err) {
    // A probe that failed because a process died says so.
    if (isKilnError(err, 'KILN_APP_CRASHED')) throw err;
    throw (await crashError(o, 0)) ?? err;
  } finally {
    abort.abort();
    await watcher.catch(() => undefined);
  }
  const crashed = await crashError(o, 0);
  if (crashed) throw crashed;
}

/** Rejects with KILN_APP_CRASHED once a process has restarted CRASH_RESTARTS times; resolves once aborted. */
async function watchCrashes(o: AppHealthOptions, signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    await sleep(250, undefined, { signal }).catch(() => undefined);
    if (signal.aborted) return;
    const err = await crashError(o, CRASH_RESTARTS - 1);
    if (err) throw err;
  }
}

/** The error of the first process that is down or restarted more than `allowed` times, with its last output. */
async function crashError(o: AppHealthOptions, allowed: number): Promise<KilnError | undefined> {
  const st = await o.service.status();
  const names = Object.keys(releaseProcesses(o.manifest));
  const bad = names.map((n) => st.processes.find((p) => p.name === n) ?? { name: n, active: false, restarts: 0, lastExit: null }).find((p) => p.restarts > allowed || (allowed === 0 && !p.active));
  if (!bad) return undefined;
  // The crash is the error; output that cannot be read is said in its place, not left out silently.
  const lines = await o.service.recentOutput(bad.name, TAIL).catch((err: Error) => [`(its output cannot be read: ${err.message})`]);
  const secs = ((Date.now() - o.startedAt) / 1000).toFixed(0);
  const tail = lines.length ? `; its last lines:\n${lines.join('\n')}` : ' (it printed nothing)';
  return new KilnError('KILN_APP_CRASHED', `${bad.name} ${howEnded(bad)} (${bad.restarts} restart${bad.restarts === 1 ? '' : 's'} in ${secs} s)${tail}`);
}

function howEnded(p: ProcessStatus): string {
  const m = /^(exit|signal) (\S+)$/.exec(p.lastExit ?? '');
  if (!m) return p.active ? 'keeps restarting' : 'is not running';
  if (m[1] === 'exit' && /^\d+$/.test(m[2]!)) return `exited with code ${m[2]}`;
  return `was killed by ${/^\d+$/.test(m[2]!) ? `signal ${m[2]}` : m[2]}`;
}
