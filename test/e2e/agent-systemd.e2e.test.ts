// The agent under a real systemd: a Debian container booted with systemd-nspawn (root only).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMachineGroup, ensureBaseRootfs, kilnCacheDir, nspawnHostProblem, type Machine } from '@kiln/controller';
import { AgentReport, type ReleaseRef } from '@kiln/shared';
import { CREDENTIAL, installAction, startFakeController, until, type FakeController } from '../helpers/agent.js';
import { STANDARD_RELEASES, freePort, makeKeys, pushReleases, quietLog, tempDir } from '../helpers/release.js';
import { writeAgentInstance } from '../helpers/nspawn.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const problem = nspawnHostProblem();
const INSTANCE = 'm-systemd-1';
const WATCHDOG_SEC = 3;

let s3: S3Fixture;
let ctl: FakeController;
let machine: Machine;
let appPort: number;
let v2: ReleaseRef;
const group = createMachineGroup();
const keys = makeKeys();

/** The instance's own files, written into its upper layer before it boots: agent, unit, config. */
async function prepareInstance(upper: string): Promise<void> {
  const config = {
    instanceId: INSTANCE,
    imageId: 'img-debian-base',
    app: 'web',
    channel: 'stable',
    s3: s3.s3.location,
    controller: { url: ctl.url, credential: CREDENTIAL },
    keys: [keys.publicPem],
    serviceManager: 'systemd',
    port: appPort,
    heartbeatMs: 1_000,
    backoffCapMs: 2_000,
  };
  // Only the watchdog period is shortened, so the test sees it fire within seconds.
  await writeAgentInstance(upper, config, `[Service]\nWatchdogSec=${WATCHDOG_SEC}s\n`);
}

async function show(unit: string, ...props: string[]): Promise<Record<string, string>> {
  const r = await machine.systemctl('show', unit, '-p', props.join(','));
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

async function journal(unit: string): Promise<string> {
  return (await machine.exec(['journalctl', '--no-pager', '-n', '60', '-u', unit])).stdout;
}

async function serving(): Promise<string | undefined> {
  try {
    return await (await fetch(`http://127.0.0.1:${appPort}/`, { signal: AbortSignal.timeout(2_000) })).text();
  } catch {
    return undefined;
  }
}

describe.skipIf(!!problem)(`the agent under a real systemd (nspawn)${problem ? ` (skipped: ${problem})` : ''}`, () => {
  beforeAll(async () => {
    const base = await ensureBaseRootfs({ cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), log: quietLog() });
    s3 = await startS3();
    ctl = await startFakeController();
    // Picked before the machine boots: its agent config tells the app this port (the machine shares the host's network).
    appPort = await freePort();
    v2 = (await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES))['2.0.0']!;
    const upper = path.join(await tempDir('kiln-test-machine-'), 'upper');
    await prepareInstance(upper);
    machine = await group.boot({ image: base, upperDir: upper, name: 'kiln-agent-test', binds: [{ host: REPO, container: '/opt/kiln', readOnly: true }], log: quietLog(), bootTimeoutMs: 30_000 });
  }, 600_000);

  afterAll(async () => {
    await group.cleanupAll();
    await ctl?.close();
    await s3?.close();
  });

  it('boots; systemd starts the agent from its unit and it reports ready (Type=notify)', async () => {
    await machine.waitUnitActive('kiln-agent.service', 30_000).catch(async (err) => {
      throw new Error(`${(err as Error).message}\n${await journal('kiln-agent.service')}`);
    });
    const st = await show('kiln-agent.service', 'Type', 'ActiveState', 'SubState', 'NRestarts');
    expect(st).toEqual({ Type: 'notify', ActiveState: 'active', SubState: 'running', NRestarts: '0' });
  }, 60_000);

  it('installs the release at boot; the app unit serves HTTP; status says via boot', async () => {
    await until('the app serving 1.0.0', async () => (await serving())?.includes('kiln-demo 1.0.0') ?? false, 40_000).catch(async (err) => {
      throw new Error(`${(err as Error).message}\n${await journal('kiln-agent.service')}\n${await journal('kiln-app-web.service')}`);
    });
    expect((await show('kiln-app-web.service', 'ActiveState')).ActiveState).toBe('active');
    const st = await machine.exec(['/usr/local/bin/kiln-agent', 'status', '--json']);
    expect(st.code, st.stderr).toBe(0);
    const report = AgentReport.parse(JSON.parse(st.stdout));
    expect(report.installed).toMatchObject({ version: '1.0.0', via: 'boot' });
    expect(report.service.active).toBe(true);
    expect(report.tree.status).toBe('ok');
  }, 60_000);

  it('both units pass systemd-analyze verify inside the machine, unchanged, with empty stderr', async () => {
    const r = await machine.exec(['systemd-analyze', 'verify', '--man=no', '/etc/systemd/system/kiln-agent.service', '/etc/systemd/system/kiln-app-web.service']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  }, 30_000);

  it('a hotfix from the controller restarts the app through systemctl', async () => {
    const before = await show('kiln-app-web.service', 'MainPID');
    await ctl.waitFor(INSTANCE, 'hello');
    ctl.command(INSTANCE, 'hotfix-1', installAction(v2));
    const result = await ctl.waitFor(INSTANCE, 'result', (m) => m.result.commandId === 'hotfix-1', 40_000);
    expect(result.result).toMatchObject({ outcome: 'installed', version: '2.0.0' });
    expect(await serving()).toContain('kiln-demo 2.0.0');
    const after = await show('kiln-app-web.service', 'MainPID', 'WorkingDirectory');
    expect(after.MainPID).not.toBe(before.MainPID);
    expect(after.WorkingDirectory).toBe('/var/lib/kiln/apps/web/releases/2.0.0');
    const report = await ctl.waitFor(INSTANCE, 'report', (m) => m.report.installed?.version === '2.0.0' && m.report.operation === null);
    expect(report.report.installed?.via).toBe('hotfix');
  }, 60_000);

  it('kill -9 of the app is restarted by systemd', async () => {
    const { MainPID: pid } = await show('kiln-app-web.service', 'MainPID');
    expect(Number(pid)).toBeGreaterThan(0);
    await machine.exec(['sh', '-c', `kill -9 ${pid}`]);
    await until('a new app process', async () => {
      const st = await show('kiln-app-web.service', 'MainPID', 'ActiveState');
      return st.ActiveState === 'active' && Number(st.MainPID) > 0 && st.MainPID !== pid;
    });
    await until('the app serving again', async () => (await serving())?.includes('kiln-demo 2.0.0') ?? false);
    expect(Number((await show('kiln-app-web.service', 'NRestarts')).NRestarts)).toBeGreaterThanOrEqual(1);
  }, 60_000);

  it("the agent's watchdog keeps it alive, and a wedged agent is restarted by it", async () => {
    const first = await show('kiln-agent.service', 'MainPID', 'NRestarts', 'WatchdogTimestampMonotonic');
    await new Promise((r) => setTimeout(r, (WATCHDOG_SEC + 1.5) * 1000));
    const later = await show('kiln-agent.service', 'MainPID', 'NRestarts', 'ActiveState', 'WatchdogTimestampMonotonic');
    // Past a whole watchdog period: the same process, never restarted, and its pings arrived.
    expect(later).toMatchObject({ MainPID: first.MainPID, NRestarts: '0', ActiveState: 'active' });
    expect(Number(later.WatchdogTimestampMonotonic)).toBeGreaterThan(Number(first.WatchdogTimestampMonotonic));
    // A stopped (wedged) agent feeds nothing: systemd's watchdog kills and restarts it.
    await machine.exec(['sh', '-c', `kill -STOP ${first.MainPID}`]);
    await until('the watchdog restart', async () => {
      const st = await show('kiln-agent.service', 'MainPID', 'NRestarts', 'ActiveState');
      return st.NRestarts === '1' && st.ActiveState === 'active' && st.MainPID !== first.MainPID;
    }, 30_000);
    expect(await serving()).toContain('kiln-demo 2.0.0');
    await ctl.waitFor(INSTANCE, 'hello', (m) => m.report.installed?.version === '2.0.0' && ctl.frames.filter((f) => 'type' in f.msg && f.msg.type === 'hello').length >= 2, 30_000);
  }, 60_000);
});
