// Faults on real machines (nspawn): a builder that dies mid-install, and a machine whose disk fills
// up. The provider keeps its images and its instances' layers on a small filesystem of their own
// (an ext4 image file on a loop device), so "disk full" is the real ENOSPC of a real filesystem.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readlink, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNspawnProvider, findTool, kilnCacheDir, nspawnHostProblem, type NspawnProvider } from '@kiln/controller';
import { startController, type TestController } from '../helpers/controller.js';
import { until } from '../helpers/agent.js';
import { answers, nspawnLaunch, stopMachines } from '../helpers/nspawn.js';
import { gatedSpec, incompressible, makeKeys, pushApp, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const problem = nspawnHostProblem() ?? (existsSync('/dev/loop-control') && findTool('mkfs.ext4') && findTool('mount') ? null : 'no loop devices or mkfs.ext4');
const DISK_MIB = 1024;

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: NspawnProvider;
let dir: string;
let disk: string;
let mounted = false;

async function runDeployment(route: string, body: Record<string, unknown>): Promise<any> {
  const started = await ctl.api('POST', route, { healthTimeoutMs: 30_000, ...body });
  expect(started.status, JSON.stringify(started.body)).toBe(201);
  const id = started.body.deployment?.id ?? started.body.bake.id;
  const kind = started.body.deployment ? 'deployment' : 'bake';
  let rec: any;
  await until(`${kind} ${id} over`, async () => {
    rec = (await ctl.api('GET', `/v1/${kind}s/${id}`)).body[kind];
    return rec.state !== 'running';
  }, 150_000);
  return rec;
}

describe.skipIf(!!problem)(`faults on real machines (nspawn)${problem ? ` (skipped: ${problem})` : ''}`, () => {
  beforeAll(async () => {
    s3 = await startS3();
    keys = makeKeys();
    const top = await tempDir('kiln-nspawn-faults-');
    disk = path.join(top, 'disk.ext4');
    dir = path.join(top, 'fs');
    await mkdir(dir);
    execFileSync('truncate', ['-s', `${DISK_MIB}M`, disk]);
    execFileSync(findTool('mkfs.ext4')!, ['-q', '-F', '-m', '0', disk]);
    execFileSync(findTool('mount')!, ['-o', 'loop', disk, dir]);
    mounted = true;
    provider = createNspawnProvider({ dir, log: quietLog(), cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), bootTimeoutMs: 60_000 });
    ctl = await startController({ s3, keys, launch: nspawnLaunch(provider, s3) });
    await pushApp({ store: s3.store, keys, version: '1.0.0' });
    await provider.defaultImage!();
  }, 600_000);

  afterAll(async () => {
    await stopMachines(ctl, provider, s3);
    if (mounted) execFileSync(findTool('umount')!, [dir]);
    if (disk) await rm(path.dirname(disk), { recursive: true, force: true });
  }, 120_000);

  it('a bake whose builder is killed mid-install fails with KILN_BAKE_FAILED naming phase install, without waiting for its deadline; the builder is reaped', async () => {
    // Healthy only once a gate file exists in the machine, which never happens: the builder waits at its health check.
    await pushApp({ store: s3.store, keys, version: '7.0.0', kilnJson: gatedSpec('/run/kiln-gate') });
    const bake = ctl.api('POST', '/v1/bakes', { app: 'web', version: '7.0.0', baseImage: (await provider.defaultImage!()).id });
    let builder = '';
    await until('the builder at its health check', async () => {
      builder = (await provider.describeInstances({ 'kiln:role': 'builder' }))[0]?.id ?? '';
      return !!builder && ctl.server.kiln.hub.get(builder)?.report?.operation?.step === 'health';
    }, 90_000);
    const killedAt = Date.now();
    await provider.machineOf(builder)!.kill();
    const { body } = await bake;
    let rec: any;
    await until('the bake over', async () => (rec = (await ctl.api('GET', `/v1/bakes/${body.bake.id}`)).body.bake).state !== 'running', 30_000);
    expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_BAKE_FAILED']);
    expect(rec.error.message).toMatch(new RegExp(`failed in phase install: KILN_PROVIDER_FAILED: the builder ${builder} is stopped`));
    // Seconds after the power cut (two provider checks, 2 s apart), not at the install deadline (60 s).
    expect(Date.parse(rec.finishedAt) - killedAt).toBeLessThan(15_000);
    expect(await provider.describeInstances({ 'kiln:role': 'builder' })).toEqual([]);
    expect(await provider.describeImages({ tags: { 'kiln:version': '7.0.0' } })).toEqual([]);
    expect(provider.machineOf(builder)).toBeUndefined();
  }, 180_000);

  it('disk full in a machine\'s layer: the hotfix is refused with KILN_NO_SPACE and the old release keeps serving; with room again it installs', async () => {
    expect((await ctl.api('POST', '/v1/fleets', { name: 'small', app: 'web', provider: 'nspawn', size: 1 })).status).toBe(201);
    const first = await runDeployment('/v1/deployments', { fleet: 'small', version: '1.0.0', strategy: 'relaunch' });
    expect(first.state, JSON.stringify(first)).toBe('succeeded');
    const [inst] = await provider.describeInstances({ 'kiln:group': first.group });
    const machine = provider.machineOf(inst!.id)!;
    expect(await answers(inst!.address!)).toContain('kiln-demo 1.0.0');

    await pushApp({ store: s3.store, keys, version: '4.0.0', extra: incompressible(40) });
    // Fill the machine's layer (the loop filesystem) but for 8 MiB.
    const free = Number(execFileSync('df', ['--output=avail', '-B1', dir], { encoding: 'utf8' }).split('\n')[1]);
    const filled = await machine.exec(['fallocate', '-l', String(free - 8 * 1024 * 1024), '/var/tmp/filler']);
    expect(filled.code, filled.stderr).toBe(0);

    const refused = await runDeployment('/v1/deployments', { fleet: 'small', version: '4.0.0', strategy: 'hotfix', maxFailures: 0 });
    expect(refused.state, JSON.stringify(refused)).toBe('failed');
    expect(refused.instances[inst!.id].error.code, JSON.stringify(refused.instances)).toBe('KILN_NO_SPACE');
    expect(await answers(inst!.address!)).toContain('kiln-demo 1.0.0');
    const app = `${machine.root}/var/lib/kiln/apps/web`;
    expect(path.basename(await readlink(`${app}/current`))).toBe('1.0.0');
    expect(await readdir(`${app}/staging`).catch(() => [])).toEqual([]);
    expect(existsSync(`${app}/releases/4.0.0`)).toBe(false);
    const row = (await ctl.api('GET', '/v1/fleets/small/instances')).body.instances[0];
    expect([row.connected, row.installed]).toEqual([true, '1.0.0']);

    expect((await machine.exec(['rm', '/var/tmp/filler'])).code).toBe(0);
    const again = await runDeployment('/v1/deployments', { fleet: 'small', version: '4.0.0', strategy: 'hotfix' });
    expect(again.state, JSON.stringify(again)).toBe('succeeded');
    expect(await answers(inst!.address!)).toContain('kiln-demo 4.0.0');
  }, 300_000);
});
