import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, realpath, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { pollUntil } from '../system/poll-until.js';
import { ifErrno, ifMissing } from '../system/fs-errors.js';
import { appLayout } from '../release/install-layout.js';
import { KilnError } from '../errors/kiln-error.js';
import type { ServiceSpec } from '../release/release-schema.js';
import type { AppRun, ProcessStatus, ServiceManager, ServiceStatus } from './service-manager.js';
import { recentLines } from './app-logs.js';
import { spawnHook } from './run-hook.js';
import { appSandbox, appUnitName, renderAppUnit, unitEnvironment } from './systemd-unit.js';

export type Systemctl = (args: string[]) => Promise<{ code: number; stdout: string; stderr: string }>;

export interface SystemdServiceOptions {
  /** the root the app's files live under ("/" on a real host) */
  root: string;
  app: string;
  log: Logger;
  /** instance environment on top of the spec's, e.g. PORT */
  env?: Record<string, string>;
  /** how to run systemctl (defaults to the host's) */
  systemctl?: Systemctl;
  timeoutMs?: number;
}

const runSystemctl: Systemctl = (args) =>
  new Promise((resolve) => {
    execFile('systemctl', args, { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && !stderr ? err.message : '') });
    });
  });

/**

 */
/**
 * The ServiceManager for hosts with systemd: each process of the app is a unit (kiln-app-APP.service
 * for `web`, kiln-app-APP.PROC.service for another), rendered from the manifest's spec, enabled so
 * it starts at boot, restarted through systemctl. Hooks run as transient units (systemd-run) with
 * the same user, sandbox and environment.
 */
export function createSystemdService(opts: SystemdServiceOptions): ServiceManager {
  const layout = appLayout(opts.root, opts.app);
  const unitDir = path.join(layout.root, 'etc/systemd/system');
  const unitFile = (proc: string) => path.join(unitDir, appUnitName(opts.app, proc));
  const wants = (proc: string) => path.join(unitDir, 'multi-user.target.wants', appUnitName(opts.app, proc));
  const systemctl = opts.systemctl ?? runSystemctl;
  const log = opts.log.child({ module: 'systemd', app: opts.app });
  const timeoutMs = opts.timeoutMs ?? 30_000;

  async function must(args: string[]): Promise<string> {
    const r = await systemctl(args);
    if (r.code !== 0) throw new KilnError('KILN_SERVICE_FAILED', `systemctl ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}; see journalctl -u ${args.at(-1)}`);
    return r.stdout;
  }

  async function show(unit: string): Promise<Record<string, string>> {
    const r = await systemctl(['show', unit, '-p', 'ActiveState,SubState,MainPID,WorkingDirectory,NRestarts,ExecMainCode,ExecMainStatus']);
    return Object.fromEntries(r.stdout.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  }

  async function enable(proc: string): Promise<void> {
    await mkdir(path.dirname(wants(proc)), { recursive: true });
    // EINVAL: something that is not a link stands there; it is replaced like a wrong link.
    if ((await ifErrno(readlink(wants(proc)), ['ENOENT', 'EINVAL'], undefined)) === unitFile(proc)) return;
    await rm(wants(proc), { force: true });
    await symlink(unitFile(proc), wants(proc));
  }

  /** The processes that have a unit file: `web` first. */
  async function known(): Promise<string[]> {
    const names: string[] = await ifMissing(readdir(unitDir), []);
    const web = appUnitName(opts.app);
    const prefix = `kiln-app-${opts.app}.`;
    const others = names.filter((n) => n !== web && n.startsWith(prefix) && n.endsWith('.service')).map((n) => n.slice(prefix.length, -'.service'.length));
    return [...(names.includes(web) ? ['web'] : []), ...others.sort()];
  }

  async function stopOne(proc: string, forget: boolean): Promise<void> {
    const unit = appUnitName(opts.app, proc);
    await rm(wants(proc), { force: true });
    const r = await systemctl(['stop', unit]);
    // Stopping a unit that was never installed is not a failure.
    if (r.code !== 0 && !/not loaded|not found/i.test(r.stderr)) throw new KilnError('KILN_SERVICE_FAILED', `systemctl stop ${unit} failed: ${r.stderr.trim()}`);
    if (forget) await rm(unitFile(proc), { force: true });
  }

  async function writeUnit(proc: string, spec: ServiceSpec, run: AppRun, releaseDir: string): Promise<boolean> {
    const env = proc === 'web' ? opts.env : Object.fromEntries(Object.entries(opts.env ?? {}).filter(([k]) => k !== 'PORT'));
    const text = renderAppUnit({ app: opts.app, process: proc, spec, releaseDir, ...(env ? { env } : {}), ...(run.envFile ? { envFile: run.envFile } : {}), ...(run.dataDirs ? { dataDirs: run.dataDirs } : {}) });
    const old = await ifMissing(readFile(unitFile(proc), 'utf8'), undefined);
    if (old === text) return false;
    await mkdir(unitDir, { recursive: true });
    await writeFileAtomic(unitFile(proc), text);
    return true;
  }

  function processStatus(proc: string, st: Record<string, string>): ProcessStatus {
    const exited = st.ExecMainCode === '1';
    const lastExit = st.ExecMainCode && st.ExecMainCode !== '0' ? (exited ? `exit ${st.ExecMainStatus}` : `signal ${st.ExecMainStatus}`) : null;
    return { name: proc, active: st.ActiveState === 'active' && st.SubState === 'running', restarts: Number(st.NRestarts) || 0, lastExit };
  }

  return {
    kind: 'systemd',
    appReadOnly: true,
    async restart(run: AppRun) {
      const releaseDir = await realpath(layout.current);
      const gone = (await known()).filter((p) => !(p in run.processes));
      for (const proc of gone) await stopOne(proc, true);
      let changed = gone.length > 0;
      for (const [proc, spec] of Object.entries(run.processes)) changed = (await writeUnit(proc, spec, run, releaseDir)) || changed;
      if (changed) await must(['daemon-reload']);
      for (const proc of Object.keys(run.processes)) {
        const unit = appUnitName(opts.app, proc);
        await enable(proc);
        log.info({ releaseDir, unit }, 'restarting the unit');
        await must(['restart', unit]);
        let st: Record<string, string> = {};
        const notStarted = () => new KilnError('KILN_SERVICE_FAILED', `${unit} did not start (state ${st.ActiveState}/${st.SubState}); see journalctl -u ${unit}`);
        await pollUntil({
          check: async () => {
            st = await show(unit);
            if (st.ActiveState === 'failed') throw notStarted();
            // activating/auto-restart: it crashed and systemd restarts it; the health gate says why.
            return (st.ActiveState === 'active' && Number(st.MainPID) > 0) || st.SubState === 'auto-restart';
          },
          timeoutMs,
          intervalMs: 50,
          timeoutError: notStarted,
        });
      }
    },
    async stop() {
      for (const proc of await known()) await stopOne(proc, false);
    },
    async status(): Promise<ServiceStatus> {
      const names = await known();
      const shows = await Promise.all(names.map((p) => show(appUnitName(opts.app, p))));
      const processes = names.map((p, i) => processStatus(p, shows[i]!));
      const st = shows[names.indexOf('web')] ?? {};
      const text = await ifMissing(readFile(unitFile('web'), 'utf8'), '');
      const webActive = processes.find((p) => p.name === 'web')?.active ?? false;
      const pid = Number(st.MainPID) || null;
      const port = Number(unitEnvironment(text).PORT) || null;
      return { active: processes.length > 0 && processes.every((p) => p.active), pid: webActive ? pid : null, release: webActive && st.WorkingDirectory ? st.WorkingDirectory : null, port, processes };
    },
    recentOutput: (proc, lines) => recentLines({ kind: 'systemd', app: opts.app }, proc, lines),
    async runHook(hook) {
      const unit = `kiln-hook-${opts.app}-${hook.name}-${process.pid}`;
      const props = appSandbox({ app: opts.app, envFile: hook.envFile, dataDirs: hook.dataDirs }).flatMap((p) => ['-p', p]);
      const env = Object.entries(hook.env).flatMap(([k, v]) => ['--setenv', `${k}=${v}`]);
      const argv = ['systemd-run', '--wait', '--pipe', '--collect', '--quiet', '--service-type=exec', `--unit=${unit}`, ...props, '-p', `WorkingDirectory=${hook.cwd}`, '-p', `RuntimeMaxSec=${Math.ceil(hook.timeoutMs / 1000)}`, ...env, '--', ...hook.command];
      return spawnHook({ command: argv, cwd: '/', env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' }, timeoutMs: hook.timeoutMs, onSpawn: hook.onSpawn, onTimeout: async () => void (await systemctl(['kill', '--signal=SIGKILL', `${unit}.service`])) });
    },
  };
}
