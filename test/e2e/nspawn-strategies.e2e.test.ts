// Bake, hotfix, heal, relaunch and rollback on real machines: the nspawn provider boots Debian with
// systemd as PID 1, the agent starts from its unit and runs the app as a systemd unit. A real
// controller and real S3 (s3rver) listen on the host's 127.0.0.1, which the machines share.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { readdir, readlink, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNspawnProvider, findHaproxy, kilnCacheDir, nspawnHostProblem, startHaproxy, type Haproxy, type NspawnProvider } from '@kiln/controller';
import { isKilnError } from '@kiln/shared';
import { startController, type TestController } from '../helpers/controller.js';
import { until } from '../helpers/agent.js';
import { answers, nspawnLaunch, stopMachines } from '../helpers/nspawn.js';
import { gatedSpec, incompressible, makeKeys, pushApp, pushReleases, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { loadLoop } from '../helpers/traffic.js';

const problem = nspawnHostProblem();
const FLEET = 'web';
const HEALTH_MS = 30_000;

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: NspawnProvider;
let dir: string;
let baseImage: string;
/** HAProxy in front of the machines, when installed: relaunch and rollback are then called through it */
let haproxy: Haproxy | undefined;
let lbDir: string | undefined;
const haproxyBinary = await findHaproxy(process.env);

/** Runs `fn` while clients call the fleet's endpoint; none of their requests may fail. Without HAProxy, just `fn`. */
async function underLoad<T>(fn: () => Promise<T>): Promise<T> {
  const endpoint = (await ctl.api('GET', `/v1/fleets/${FLEET}`)).body.fleet.endpoint;
  if (!haproxy) return fn();
  expect(endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
  const load = loadLoop(endpoint, 2);
  const out = await fn();
  const seen = await load.stop();
  expect(Object.fromEntries(seen.failures)).toEqual({});
  expect(seen.ok).toBeGreaterThan(0);
  return out;
}

/** Starts a deployment (POST to `route`) and waits until it is over; the final record. */
async function runDeployment(route: string, body: Record<string, unknown>): Promise<any> {
  const started = await ctl.api('POST', route, { healthTimeoutMs: HEALTH_MS, ...body });
  expect(started.status, JSON.stringify(started.body)).toBe(201);
  const id = started.body.deployment.id as string;
  let rec: any;
  await until(`deployment ${id} over`, async () => {
    rec = (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;
    return rec.state !== 'running';
  }, 150_000);
  expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
  return rec;
}

const strategy = (version: string, name: string) => runDeployment('/v1/deployments', { fleet: FLEET, version, strategy: name, batch: { percent: 100 } });
const rows = async () => (await ctl.api('GET', `/v1/fleets/${FLEET}/instances`)).body;
const groupOf = (group: string) => provider.describeInstances({ 'kiln:group': group });

/** Every instance of the group answers HTTP with the version, each on its own port. */
async function expectServing(group: string, version: string): Promise<void> {
  const insts = await groupOf(group);
  expect(insts).toHaveLength(3);
  expect(new Set(insts.map((i) => i.address)).size).toBe(3);
  for (const i of insts) expect(await answers(i.address!)).toContain(`kiln-demo ${version}`);
}

async function unitProps(instanceId: string, unit: string): Promise<Record<string, string>> {
  const m = provider.machineOf(instanceId);
  if (!m) throw new Error(`no running machine ${instanceId}`);
  const r = await m.systemctl('show', unit, '-p', 'MainPID,ActiveState,NRestarts');
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** kill -9 of a unit's main process inside the machine; resolves once systemd has started a new one. */
async function killAndWaitRestart(instanceId: string, unit: string): Promise<void> {
  const before = await unitProps(instanceId, unit);
  expect(Number(before.MainPID)).toBeGreaterThan(0);
  const killed = await provider.machineOf(instanceId)!.exec(['sh', '-c', `kill -9 ${before.MainPID}`]);
  expect(killed.code, killed.stderr).toBe(0);
  await until(`${unit} restarted by systemd`, async () => {
    const now = await unitProps(instanceId, unit);
    return now.ActiveState === 'active' && Number(now.MainPID) > 0 && now.MainPID !== before.MainPID && Number(now.NRestarts) > Number(before.NRestarts);
  }, 30_000);
}

/** Processes whose command line names a machine of this suite, and mounts of its directory anywhere. */
function leftBehind(): { processes: number[]; mounts: number[] } {
  const processes: number[] = [];
  const mounts: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(dir)) processes.push(Number(entry));
      if (readFileSync(`/proc/${entry}/mountinfo`, 'utf8').includes(dir)) mounts.push(Number(entry));
    } catch {
      // gone, or a zombie
    }
  }
  return { processes, mounts };
}

describe.skipIf(!!problem)(`fleet strategies on real machines (nspawn)${problem ? ` (skipped: ${problem})` : ''}`, () => {
  beforeAll(async () => {
    s3 = await startS3();
    keys = makeKeys();
    dir = await tempDir('kiln-nspawn-');
    provider = createNspawnProvider({ dir, log: quietLog(), cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), bootTimeoutMs: 60_000 });
    // Its own directory: the last test looks for processes naming the machines' directory.
    if (haproxyBinary) haproxy = await startHaproxy({ dir: (lbDir = await tempDir('kiln-nspawn-lb-')), log: quietLog(), binary: haproxyBinary });
    ctl = await startController({ s3, keys, launch: nspawnLaunch(provider, s3), ...(haproxy ? { balancers: { local: haproxy } } : {}) });
    await pushReleases({ store: s3.store, keys }, ['1.0.0', '2.0.0', '3.0.0']);
    // The base image (cached Debian tree + the agent bundle); a first run also debootstraps the tree.
    baseImage = (await provider.defaultImage!()).id;
  }, 600_000);

  afterAll(async () => {
    await stopMachines(ctl, provider, s3);
    await haproxy?.close();
    if (lbDir) await rm(lbDir, { recursive: true, force: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  it('bakes 1.0.0 from the base image and launches a fleet of 3 machines, each serving 1.0.0 as baked', async () => {
    const created = await ctl.api('POST', '/v1/fleets', { name: FLEET, app: 'web', provider: 'nspawn', size: 3 });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body.fleet.image).toMatch(/^img-base-/);
    const rec = await strategy('1.0.0', 'bake');
    expect(rec.group).toBe('web-v001');
    const [image] = await provider.describeImages({ ids: [rec.image] });
    expect(image?.tags).toMatchObject({ 'kiln:version': '1.0.0', 'kiln:base-image': created.body.fleet.image });
    expect(await provider.describeInstances({ 'kiln:role': 'builder' })).toEqual([]);
    await expectServing('web-v001', '1.0.0');
    const st = await rows();
    expect(st.instances.map((i: any) => [i.installed, i.via])).toEqual(Array(3).fill(['1.0.0', 'baked']));
    // The app runs as a systemd unit of the machine, started by the agent that systemd started.
    const [first] = await groupOf('web-v001');
    expect((await unitProps(first!.id, 'kiln-app-web.service')).ActiveState).toBe('active');
    expect((await unitProps(first!.id, 'kiln-agent.service')).ActiveState).toBe('active');
  }, 240_000);

  it('hotfixes 2.0.0 in place (drift: hotfix), then heals: bakes 2.0.0 and replaces the group (via baked)', async () => {
    await strategy('2.0.0', 'hotfix');
    await expectServing('web-v001', '2.0.0');
    const drift = (await ctl.api('GET', `/v1/fleets/${FLEET}/drift`)).body;
    expect(drift.summary.offImage).toBe(3);
    expect((await rows()).instances.every((i: any) => i.via === 'hotfix' && i.installed === '2.0.0')).toBe(true);
    const healed = await runDeployment(`/v1/fleets/${FLEET}/heal`, {});
    expect(healed.group).toBe('web-v002');
    await expectServing('web-v002', '2.0.0');
    const st = await rows();
    expect(st.summary.inSync).toBe(3);
    expect(st.instances.map((i: any) => [i.installed, i.via, i.group])).toEqual(Array(3).fill(['2.0.0', 'baked', 'web-v002']));
    expect((await groupOf('web-v001')).map((i) => i.state)).toEqual(['stopped', 'stopped', 'stopped']);
  }, 300_000);

  it('relaunches 3.0.0 from the 2.0.0 image: each machine installs it at boot (via boot); behind HAProxy, no request fails', async () => {
    const rec = await underLoad(() => strategy('3.0.0', 'relaunch'));
    expect(rec.group).toBe('web-v003');
    await expectServing('web-v003', '3.0.0');
    const st = await rows();
    expect(st.instances.map((i: any) => [i.installed, i.via, i.image])).toEqual(Array(3).fill(['3.0.0', 'boot', '2.0.0']));
    expect(await groupOf('web-v001')).toEqual([]);
  }, 240_000);

  it('rolls back: the stopped 2.0.0 machines boot again over their layers and serve; the 3.0.0 group is stopped', async () => {
    await underLoad(() => runDeployment(`/v1/fleets/${FLEET}/rollback`, {}));
    await expectServing('web-v002', '2.0.0');
    expect((await rows()).instances.map((i: any) => [i.installed, i.group])).toEqual(Array(3).fill(['2.0.0', 'web-v002']));
    expect((await groupOf('web-v003')).map((i) => i.state)).toEqual(['stopped', 'stopped', 'stopped']);
  }, 240_000);

  it('kill -9 of the app: systemd restarts it and it serves again', async () => {
    const [inst] = await groupOf('web-v002');
    await killAndWaitRestart(inst!.id, 'kiln-app-web.service');
    await until('the app serving again', async () => (await answers(inst!.address!)).includes('kiln-demo 2.0.0'));
  }, 60_000);

  it('kill -9 of the agent: systemd restarts it, it reconnects and reports the same release', async () => {
    const [inst] = await groupOf('web-v002');
    const connectedAt = async () => (await rows()).instances.find((i: any) => i.instanceId === inst!.id);
    await killAndWaitRestart(inst!.id, 'kiln-agent.service');
    await until('the agent back, reporting 2.0.0', async () => {
      const row = await connectedAt();
      return row?.connected === true && row.installed === '2.0.0' && row.drift === 'in-sync';
    }, 30_000);
    expect(await answers(inst!.address!)).toContain('kiln-demo 2.0.0');
  }, 60_000);

  it('kill -9 of the agent mid-install: systemd restarts it, it recovers from its journal (the old release current and serving) and reports the command interrupted', async () => {
    // Healthy only once a gate file exists in the machine, which never happens: the install waits at its health check.
    const gated = await pushApp({ store: s3.store, keys, version: '6.0.0', kilnJson: gatedSpec('/run/kiln-gate-never') });
    const [, inst] = await groupOf('web-v002');
    const id = inst!.id;
    const hub = ctl.server.kiln.hub;
    const atHealth = new Promise<void>((resolve) => {
      const onProgress = (from: string, commandId: string, stage: string) => {
        if (from === id && commandId === 'agent-kill' && stage === 'health') {
          hub.off('progress', onProgress);
          resolve();
        }
      };
      hub.on('progress', onProgress);
    });
    expect(hub.command(id, 'agent-kill', 'web', { kind: 'install', version: '6.0.0', seq: gated.manifest.seq, manifestSha256: gated.manifestSha256 })).toBe(true);
    await atHealth;
    const app = `${provider.machineOf(id)!.root}/var/lib/kiln/apps/web`;
    expect(existsSync(`${app}/journal.json`)).toBe(true);
    await killAndWaitRestart(id, 'kiln-agent.service');
    await until('the restarted agent reports the command interrupted', () => hub.get(id)?.results.get('agent-kill')?.outcome === 'interrupted', 30_000);
    expect(existsSync(`${app}/journal.json`)).toBe(false);
    expect(path.basename(await readlink(`${app}/current`))).toBe('2.0.0');
    expect(await readdir(`${app}/staging`).catch(() => [])).toEqual([]);
    await until('2.0.0 serving', async () => (await answers(inst!.address!)).includes('kiln-demo 2.0.0'), 30_000);
    const row = (await rows()).instances.find((i: any) => i.instanceId === id);
    expect([row.connected, row.installed, row.operation]).toEqual([true, '2.0.0', null]);
  }, 90_000);

  it('power cut mid-install (the machine killed): after the next boot, current is a complete old or new release and serves', async () => {
    const big = await pushApp({ store: s3.store, keys, version: '5.0.0', extra: incompressible(40) });
    const [inst] = await groupOf('web-v002');
    const id = inst!.id;
    const machine = provider.machineOf(id)!;
    const hub = ctl.server.kiln.hub;
    // The plug is pulled at the first install step past the download, or at the end if it is too quick for that.
    let cutAt = '';
    const cut = new Promise<void>((resolve) => {
      const done = (at: string) => {
        cutAt ||= at;
        hub.off('progress', onProgress);
        hub.off('result', onResult);
        resolve();
      };
      const onProgress = (from: string, commandId: string, stage: string) => {
        if (from === id && commandId === 'power-cut' && ['rename', 'mark', 'swap', 'restart', 'health', 'commit'].includes(stage)) done(stage);
      };
      const onResult = (from: string, result: { commandId: string }) => {
        if (from === id && result.commandId === 'power-cut') done('after the result');
      };
      hub.on('progress', onProgress);
      hub.on('result', onResult);
    });
    expect(hub.command(id, 'power-cut', 'web', { kind: 'install', version: '5.0.0', seq: big.manifest.seq, manifestSha256: big.manifestSha256 })).toBe(true);
    await cut;
    await machine.kill();
    await provider.start([id], { timeoutMs: 60_000 });
    const app = `${provider.machineOf(id)!.root}/var/lib/kiln/apps/web`;
    const current = path.basename(await readlink(`${app}/current`));
    expect(['2.0.0', '5.0.0'], `cut at ${cutAt}`).toContain(current);
    // Complete: its files and its completion marker are there.
    expect(existsSync(`${app}/releases/${current}/server.js`) && existsSync(`${app}/meta/${current}.json`), `cut at ${cutAt}`).toBe(true);
    await until(`the app serving ${current} after the boot (cut at ${cutAt})`, async () => (await answers(inst!.address!)).includes(`kiln-demo ${current}`), 30_000);
    await until('no staging left once the agent has recovered', async () => (await readdir(`${app}/staging`).catch(() => [])).length === 0, 30_000);
  }, 120_000);

  it('refuses unknown or malformed ids and regions, by code', async () => {
    const code = (p: Promise<unknown>) => p.then(() => 'resolved', (err: unknown) => (isKilnError(err) ? err.code : String(err)));
    const boot = { agent: { app: 'web' } };
    expect(await code(provider.launch({ imageId: 'img-nothere', count: 1, tags: {}, boot }))).toBe('KILN_IMAGE_NOT_FOUND');
    expect(await code(provider.launch({ imageId: '../../etc', count: 1, tags: {}, boot }))).toBe('KILN_IMAGE_NOT_FOUND');
    expect(await code(provider.createImage('i-nothere', { name: 'x', tags: {} }, { timeoutMs: 1_000 }))).toBe('KILN_INSTANCE_NOT_FOUND');
    expect(await code(provider.copyImage(baseImage, ['eu-west-1'], { timeoutMs: 1_000 }))).toBe('KILN_PROVIDER_FAILED');
  });

  it('a machine that does not boot by the deadline fails the launch with KILN_BOOT_TIMEOUT and is reaped', async () => {
    const hasty = createNspawnProvider({ dir, log: quietLog(), cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), bootTimeoutMs: 1 });
    const err = await hasty.launch({ imageId: baseImage, count: 2, tags: { 'kiln:role': 'hasty' }, boot: { agent: { app: 'web' } } }).catch((e: unknown) => e);
    expect(isKilnError(err) && err.code, String(err)).toBe('KILN_BOOT_TIMEOUT');
    expect(await provider.describeInstances({ 'kiln:role': 'hasty' })).toEqual([]);
    expect(hasty.machineOf('i-anything')).toBeUndefined();
  }, 60_000);

  it('terminating every instance leaves no machine, process or mount behind, and the base image untouched', async () => {
    const all = await provider.describeInstances({});
    expect(all.length).toBeGreaterThanOrEqual(6);
    await provider.terminate(all.map((i) => i.id));
    expect(await provider.describeInstances({})).toEqual([]);
    await until('no machine process left', () => leftBehind().processes.length === 0, 10_000);
    expect(leftBehind()).toEqual({ processes: [], mounts: [] });
    // Every machine of this suite booted from it or from images baked from it: none wrote into it.
    const root = path.join(dir, 'images', baseImage, 'root');
    expect(existsSync(path.join(root, 'usr/local/bin/kiln-agent'))).toBe(true);
    expect(['etc/kiln/agent.json', 'var/lib/kiln/apps'].filter((p) => existsSync(path.join(root, p)))).toEqual([]);
    expect(readFileSync(path.join(root, 'etc/machine-id'), 'utf8')).toBe('');
  }, 60_000);
});
