import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { pollUntil } from '../system/poll-until.js';
import { isAlive, isSameProcess } from '../system/process-alive.js';
import { KilnError } from '../errors/kiln-error.js';
import type { ServiceSpec } from '../release/release-schema.js';
import type { ServiceManager, ServiceStatus } from './service-manager.js';
import { readServiceFile, readSupervisorStatus, supervisorPaths, type ServiceFile } from './supervisor-files.js';

export interface ProcessSupervisorOptions {
  /** the app's directory under the root (see appLayout) */
  appDir: string;
  log: Logger;
  /** added to the app's environment, e.g. PORT for one of several instances on a host; kept from the last start when omitted */
  env?: Record<string, string>;
  /** how to start the daemon (`--app-dir DIR` is added); defaults to this Node running the package's "./supervisor" entry */
  daemonCommand?: string[];
  /** how long a start or stop may take before it is a failure */
  timeoutMs?: number;
}

/**
 * The built-in ServiceManager for hosts without systemd: a small detached daemon per app
 * (supervisor-daemon.ts) that outlives the command that installed the release.
 */
export function createProcessSupervisor(opts: ProcessSupervisorOptions): ServiceManager {
  const files = supervisorPaths(opts.appDir);
  const log = opts.log.child({ module: 'process-supervisor' });
  const timeoutMs = opts.timeoutMs ?? 15_000;

  const waitFor = (what: string, done: () => Promise<boolean>, ms: number) =>
    pollUntil({ check: done, timeoutMs: ms, timeoutError: () => new KilnError('KILN_SERVICE_FAILED', `the process supervisor did not ${what} within ${ms} ms; see ${files.log}`) });

  async function liveDaemon(): Promise<number | undefined> {
    const st = await readSupervisorStatus(files.status);
    return st && st.state !== 'stopped' && isSameProcess(st.daemonPid, st.daemonStart) ? st.daemonPid : undefined;
  }

  return {
    kind: 'process',
    async restart(spec: ServiceSpec) {
      // Without env of its own, a restart keeps the instance's env from the last start (e.g. its PORT).
      const env = opts.env ?? (await readServiceFile(files.service))?.env ?? {};
      const svc: ServiceFile = { spec, env };
      await writeFileAtomic(files.service, JSON.stringify(svc, null, 2) + '\n');
      const before = (await readSupervisorStatus(files.status))?.generation ?? 0;
      const pid = await liveDaemon();
      if (pid) {
        log.info({ pid }, 'asking the supervisor to restart the app');
        process.kill(pid, 'SIGHUP');
      } else {
        // Resolved only here: in the agent's one-file bundle there is no package to resolve, and its agent passes daemonCommand.
        const [cmd, ...args] = opts.daemonCommand ?? [process.execPath, fileURLToPath(import.meta.resolve('@kiln/shared/supervisor'))];
        await mkdir(opts.appDir, { recursive: true });
        const out = openSync(files.log, 'a');
        const daemon = spawn(cmd!, [...args, '--app-dir', opts.appDir], { detached: true, stdio: ['ignore', out, out] });
        closeSync(out); // the daemon has its own copy
        daemon.unref();
        log.info({ pid: daemon.pid }, 'started the process supervisor');
      }
      await waitFor(
        'start the app',
        async () => {
          const st = await readSupervisorStatus(files.status);
          return !!st && st.generation > before && st.state === 'running' && isSameProcess(st.childPid, st.childStart);
        },
        timeoutMs + spec.stopTimeoutMs,
      );
    },
    async stop() {
      const pid = await liveDaemon();
      if (!pid) return;
      process.kill(pid, 'SIGTERM');
      await waitFor('stop', async () => !isAlive(pid), timeoutMs + 10_000);
    },
    async status(): Promise<ServiceStatus> {
      const [st, svc] = await Promise.all([readSupervisorStatus(files.status), readServiceFile(files.service)]);
      const active = !!st && isSameProcess(st.daemonPid, st.daemonStart) && st.state === 'running' && isSameProcess(st.childPid, st.childStart);
      const port = Number(svc?.env.PORT ?? svc?.spec.port) || null;
      return { active, pid: active ? st!.childPid : null, release: active ? st!.release : null, port };
    },
  };
}

