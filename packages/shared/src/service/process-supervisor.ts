import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { pollUntil } from '../system/poll-until.js';
import { isAlive, isSameProcess } from '../system/process-alive.js';
import { KilnError } from '../errors/kiln-error.js';
import type { ServiceSpec } from '../release/release-schema.js';
import { plainEnv, readEnvFile } from './plain-env.js';
import { spawnHook } from './run-hook.js';
import type { AppRun, ProcessStatus, ServiceManager, ServiceStatus } from './service-manager.js';
import { readServiceFile, readSupervisorStatus, supervisorPaths, type ServiceFile, type SupervisorStatus } from './supervisor-files.js';
import { appProcesses, recentLines, type LogSource } from './app-logs.js';

export interface ProcessSupervisorOptions {
  /** the app's directory under the root (see appLayout) */
  appDir: string;
  log: Logger;
  /** added to the app's environment, e.g. PORT for one of several instances on a host; kept from the last start when omitted */
  env?: Record<string, string>;
  /** how to start the daemon (`--app-dir DIR --process NAME` is added); defaults to this Node running the package's "./supervisor" entry */
  daemonCommand?: string[];
  /** how long a start or stop may take before it is a failure */
  timeoutMs?: number;
}

/**
 * The built-in ServiceManager for hosts without systemd: a small detached daemon per process of the
 * app (supervisor-daemon.ts) that outlives the command that installed the release.
 */
export function createProcessSupervisor(opts: ProcessSupervisorOptions): ServiceManager {
  const log = opts.log.child({ module: 'process-supervisor' });
  const timeoutMs = opts.timeoutMs ?? 15_000;

  const waitFor = (what: string, done: () => Promise<boolean>, ms: number, proc: string) =>
    pollUntil({ check: done, timeoutMs: ms, timeoutError: () => new KilnError('KILN_SERVICE_FAILED', `the process supervisor did not ${what} within ${ms} ms; see ${supervisorPaths(opts.appDir, proc).log}`) });

  async function liveDaemon(proc: string): Promise<number | undefined> {
    const st = await readSupervisorStatus(supervisorPaths(opts.appDir, proc).status);
    return st && st.state !== 'stopped' && isSameProcess(st.daemonPid, st.daemonStart) ? st.daemonPid : undefined;
  }

  const source: LogSource = { kind: 'process', app: path.basename(opts.appDir), appDir: opts.appDir };
  /** The processes this app has service files for: `web` first. */
  const known = () => appProcesses(source);

  async function restartOne(proc: string, spec: ServiceSpec, envFile: string | undefined): Promise<void> {
    const files = supervisorPaths(opts.appDir, proc);
    // Without env of its own, a restart keeps the instance's env from the last start (e.g. its PORT).
    const env = opts.env ?? (await readServiceFile(supervisorPaths(opts.appDir).service))?.env ?? {};
    // PORT is the instance's for its main process; another process has its own or none.
    const svc: ServiceFile = { spec, env: proc === 'web' ? env : Object.fromEntries(Object.entries(env).filter(([k]) => k !== 'PORT')), ...(envFile ? { envFile } : {}) };
    await writeFileAtomic(files.service, JSON.stringify(svc, null, 2) + '\n');
    const before = (await readSupervisorStatus(files.status))?.generation ?? 0;
    const pid = await liveDaemon(proc);
    if (pid) {
      log.info({ pid, process: proc }, 'asking the supervisor to restart the process');
      process.kill(pid, 'SIGHUP');
    } else {
      // Resolved only here: in the agent's one-file bundle there is no package to resolve, and its agent passes daemonCommand.
      const [cmd, ...args] = opts.daemonCommand ?? [process.execPath, fileURLToPath(import.meta.resolve('@kiln/shared/supervisor'))];
      await mkdir(opts.appDir, { recursive: true });
      const out = openSync(files.log, 'a');
      const daemon = spawn(cmd!, [...args, '--app-dir', opts.appDir, '--process', proc], { detached: true, stdio: ['ignore', out, out] });
      closeSync(out); // the daemon has its own copy
      daemon.unref();
      log.info({ pid: daemon.pid, process: proc }, 'started the process supervisor');
    }
    await waitFor(
      `start ${proc}`,
      async () => {
        const st = await readSupervisorStatus(files.status);
        return !!st && st.generation > before && (st.state === 'running' || st.state === 'backoff');
      },
      timeoutMs + spec.stopTimeoutMs,
      proc,
    );
  }

  async function stopOne(proc: string, forget: boolean): Promise<void> {
    const pid = await liveDaemon(proc);
    if (pid) {
      process.kill(pid, 'SIGTERM');
      await waitFor(`stop ${proc}`, async () => !isAlive(pid), timeoutMs + 10_000, proc);
    }
    if (forget) {
      const files = supervisorPaths(opts.appDir, proc);
      await Promise.all([rm(files.service, { force: true }), rm(files.status, { force: true })]);
    }
  }

  const processStatus = (name: string, st: SupervisorStatus | undefined): ProcessStatus => ({
    name,
    active: !!st && isSameProcess(st.daemonPid, st.daemonStart) && st.state === 'running' && isSameProcess(st.childPid, st.childStart),
    restarts: st?.restarts ?? 0,
    lastExit: st?.lastExit ?? null,
  });

  return {
    kind: 'process',
    async restart(run: AppRun) {
      const gone = (await known()).filter((p) => !(p in run.processes));
      for (const proc of gone) await stopOne(proc, true);
      // One after the other, web first: each waits for the one before to have been started.
      for (const [proc, spec] of Object.entries(run.processes)) await restartOne(proc, spec, run.envFile);
    },
    async stop() {
      for (const proc of await known()) await stopOne(proc, false);
    },
    async status(): Promise<ServiceStatus> {
      const names = await known();
      const sts = await Promise.all(names.map((n) => readSupervisorStatus(supervisorPaths(opts.appDir, n).status)));
      const processes = names.map((n, i) => processStatus(n, sts[i]));
      const web = sts[names.indexOf('web')];
      const svc = await readServiceFile(supervisorPaths(opts.appDir).service);
      const webActive = processes.find((p) => p.name === 'web')?.active ?? false;
      const port = Number(svc?.env.PORT ?? svc?.spec.port) || null;
      return { active: processes.length > 0 && processes.every((p) => p.active), pid: webActive ? web!.childPid : null, release: webActive ? web!.release : null, port, processes };
    },
    recentOutput: (proc, lines) => recentLines(source, proc, lines),
    runHook: async (hook) => spawnHook({ command: hook.command, cwd: hook.cwd, env: { ...plainEnv(), ...hook.env, ...(await readEnvFile(hook.envFile)) }, timeoutMs: hook.timeoutMs, onSpawn: hook.onSpawn }),
  };
}
