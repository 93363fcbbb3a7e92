import { execFile } from 'node:child_process';
import { mkdir, readFile, readlink, realpath, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { pollUntil } from '../system/poll-until.js';
import { ifErrno, ifMissing } from '../system/fs-errors.js';
import { appLayout } from '../release/install-layout.js';
import { KilnError } from '../errors/kiln-error.js';
import type { ServiceSpec } from '../release/release-schema.js';
import type { ServiceManager, ServiceStatus } from './service-manager.js';
import { appUnitName, renderAppUnit, unitEnvironment } from './systemd-unit.js';

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
 * The ServiceManager for hosts with systemd: the app is the unit kiln-app-APP.service, rendered
 * from the manifest's service spec, enabled so it starts at boot, restarted through systemctl.
 */
export function createSystemdService(opts: SystemdServiceOptions): ServiceManager {
  const unit = appUnitName(opts.app);
  const layout = appLayout(opts.root, opts.app);
  const unitDir = path.join(layout.root, 'etc/systemd/system');
  const unitFile = path.join(unitDir, unit);
  const wants = path.join(unitDir, 'multi-user.target.wants', unit);
  const systemctl = opts.systemctl ?? runSystemctl;
  const log = opts.log.child({ module: 'systemd', unit });
  const timeoutMs = opts.timeoutMs ?? 30_000;

  async function must(args: string[]): Promise<string> {
    const r = await systemctl(args);
    if (r.code !== 0) throw new KilnError('KILN_SERVICE_FAILED', `systemctl ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}; see journalctl -u ${unit}`);
    return r.stdout;
  }

  async function show(): Promise<Record<string, string>> {
    const r = await systemctl(['show', unit, '-p', 'ActiveState,SubState,MainPID,WorkingDirectory,NRestarts']);
    return Object.fromEntries(r.stdout.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  }

  async function enable(): Promise<void> {
    await mkdir(path.dirname(wants), { recursive: true });
    // EINVAL: something that is not a link stands there; it is replaced like a wrong link.
    if ((await ifErrno(readlink(wants), ['ENOENT', 'EINVAL'], undefined)) === unitFile) return;
    await rm(wants, { force: true });
    await symlink(unitFile, wants);
  }

  return {
    kind: 'systemd',
    async restart(spec: ServiceSpec) {
      const releaseDir = await realpath(layout.current);
      const text = renderAppUnit({ app: opts.app, spec, releaseDir, ...(opts.env ? { env: opts.env } : {}) });
      const old = await ifMissing(readFile(unitFile, 'utf8'), undefined);
      if (old !== text) {
        await mkdir(unitDir, { recursive: true });
        await writeFileAtomic(unitFile, text);
        await must(['daemon-reload']);
      }
      await enable();
      log.info({ releaseDir }, 'restarting the app unit');
      await must(['restart', unit]);
      let st: Record<string, string> = {};
      const notStarted = () => new KilnError('KILN_SERVICE_FAILED', `${unit} did not start (state ${st.ActiveState}/${st.SubState}); see journalctl -u ${unit}`);
      await pollUntil({
        check: async () => {
          st = await show();
          if (st.ActiveState === 'failed') throw notStarted();
          return st.ActiveState === 'active' && Number(st.MainPID) > 0;
        },
        timeoutMs,
        intervalMs: 50,
        timeoutError: notStarted,
      });
    },
    async stop() {
      await rm(wants, { force: true });
      const r = await systemctl(['stop', unit]);
      // Stopping a unit that was never installed is not a failure.
      if (r.code !== 0 && !/not loaded|not found/i.test(r.stderr)) throw new KilnError('KILN_SERVICE_FAILED', `systemctl stop ${unit} failed: ${r.stderr.trim()}`);
    },
    async status(): Promise<ServiceStatus> {
      const [st, text] = await Promise.all([show(), ifMissing(readFile(unitFile, 'utf8'), '')]);
      const active = st.ActiveState === 'active' && st.SubState === 'running';
      const pid = Number(st.MainPID) || null;
      const port = Number(unitEnvironment(text).PORT) || null;
      return { active, pid: active ? pid : null, release: active && st.WorkingDirectory ? st.WorkingDirectory : null, port };
    },
  };
}
