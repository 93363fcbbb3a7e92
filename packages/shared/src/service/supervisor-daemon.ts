import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { backoffDelay } from '../system/backoff.js';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { hasErrno } from '../system/fs-errors.js';
import { isSameProcess, processStart } from '../system/process-alive.js';
import { parseEnvFile } from './env-file.js';
import { ServiceFile, readSupervisorStatus, supervisorPaths, type SupervisorStatus } from './supervisor-files.js';

export interface SupervisorDaemonOptions {
  appDir: string;
  /** the app's process this daemon runs (default `web`) */
  process?: string;
  log: Logger;
  /** the environment the app inherits before the spec's env is applied */
  baseEnv: NodeJS.ProcessEnv;
}

/**
 * The built-in process supervisor: runs the app from `current`, restarts it when it dies (capped
 * backoff), restarts it on SIGHUP (after a swap), stops it cleanly on SIGTERM and exits.
 */
export async function runSupervisorDaemon(opts: SupervisorDaemonOptions): Promise<void> {
  const log = opts.log.child({ module: 'supervisor', process: opts.process ?? 'web' });
  const files = supervisorPaths(opts.appDir, opts.process);
  const current = path.join(opts.appDir, 'current');
  const status: SupervisorStatus = {
    daemonPid: process.pid,
    daemonStart: processStart(process.pid),
    childPid: null,
    childStart: null,
    release: null,
    generation: 0,
    state: 'starting',
    restarts: 0,
    lastExit: null,
    updatedAt: new Date().toISOString(),
  };
  const previous = await readSupervisorStatus(files.status);
  status.generation = previous?.generation ?? 0;
  // A child left behind by a daemon that was killed would hold the app's port: end it first.
  if (previous?.childPid && !isSameProcess(previous.daemonPid, previous.daemonStart) && isSameProcess(previous.childPid, previous.childStart)) {
    log.warn({ childPid: previous.childPid }, 'ending an app process left by a dead supervisor');
    killGroup(previous.childPid, 'SIGKILL');
  }

  let child: ChildProcess | undefined;
  let stopping = false;
  // Restarts in a row that came to nothing: each doubles the wait (0.2 s up to 10 s).
  let failures = 0;
  const nextDelay = () => backoffDelay(failures++, { baseMs: 200, capMs: 10_000 });
  let backoffTimer: NodeJS.Timeout | undefined;
  let startedAt = 0;
  let writing = Promise.resolve();

  const publish = () => {
    status.updatedAt = new Date().toISOString();
    const snapshot = JSON.stringify(status);
    writing = writing.then(() => writeFileAtomic(files.status, snapshot)).catch((err) => log.error({ err }, 'cannot write supervisor status'));
    return writing;
  };

  const start = () => {
    clearTimeout(backoffTimer);
    let svc: ServiceFile;
    let cwd: string;
    let fleetEnv: Record<string, string>;
    try {
      svc = ServiceFile.parse(JSON.parse(readFileSync(files.service, 'utf8')));
      cwd = realpathSync(current);
      fleetEnv = svc.envFile ? parseEnvFile(readFileSync(svc.envFile, 'utf8'), svc.envFile) : {};
    } catch (err) {
      log.error({ err }, 'cannot start the app: no current release, service file or environment file');
      status.state = 'backoff';
      status.lastExit = `cannot start: ${(err as Error).message}`;
      void publish();
      backoffTimer = setTimeout(start, nextDelay());
      return;
    }
    const env: NodeJS.ProcessEnv = { ...opts.baseEnv, ...svc.spec.env, ...fleetEnv, KILN_RELEASE_DIR: cwd, ...(svc.spec.port ? { PORT: String(svc.spec.port) } : {}), ...svc.env };
    const out = openSync(files.log, 'a');
    const proc = spawn(svc.spec.command[0]!, svc.spec.command.slice(1), { cwd, env, stdio: ['ignore', out, out], detached: true });
    closeSync(out); // the child has its own copy
    child = proc;
    startedAt = Date.now();
    status.childPid = proc.pid ?? null;
    status.childStart = proc.pid ? processStart(proc.pid) : null;
    status.release = cwd;
    status.state = 'running';
    log.info({ childPid: proc.pid, release: cwd }, 'app started');
    proc.on('error', (err) => log.error({ err }, 'app failed to spawn'));
    proc.on('exit', (code, signal) => {
      if (child !== proc) return;
      child = undefined;
      status.childPid = null;
      status.childStart = null;
      status.lastExit = `exit ${code ?? signal}`;
      if (stopping) return;
      if (Date.now() - startedAt > 30_000) failures = 0;
      status.restarts++;
      status.state = 'backoff';
      const inMs = nextDelay();
      log.warn({ code, signal, inMs }, 'app exited; restarting');
      void publish();
      backoffTimer = setTimeout(start, inMs);
    });
    void publish();
  };

  const stopChild = async (timeoutMs: number): Promise<void> => {
    clearTimeout(backoffTimer);
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    child = undefined;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    killGroup(proc.pid!, 'SIGTERM');
    const timer = setTimeout(() => killGroup(proc.pid!, 'SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
    status.childPid = null;
    status.childStart = null;
  };

  // Stopping goes on whatever the service file says: without one that reads, the default timeout.
  const stopTimeout = () => {
    try {
      return ServiceFile.parse(JSON.parse(readFileSync(files.service, 'utf8'))).spec.stopTimeoutMs;
    } catch (err) {
      if (!hasErrno(err, 'ENOENT')) log.warn({ err, file: files.service }, 'cannot read the stop timeout: using 10 s');
      return 10_000;
    }
  };

  let queue = Promise.resolve();
  const restart = () => {
    queue = queue.then(async () => {
      if (stopping) return;
      await stopChild(stopTimeout());
      status.generation++;
      status.restarts = 0;
      failures = 0;
      start();
    });
  };

  await new Promise<void>((resolve) => {
    process.on('SIGHUP', restart);
    const shutdown = () => {
      if (stopping) return;
      stopping = true;
      queue = queue.then(async () => {
        await stopChild(stopTimeout());
        status.state = 'stopped';
        await publish();
        resolve();
      });
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
    restart();
  });
}

/** Signals the child's process group, or the child alone when it has none; ESRCH: it is gone already. */
function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if (!hasErrno(err, 'ESRCH')) throw err;
    try {
      process.kill(pid, signal);
    } catch (e) {
      if (!hasErrno(e, 'ESRCH')) throw e;
    }
  }
}
