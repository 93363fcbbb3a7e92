// Bake, relaunch, hotfix, heal and group rollback on the process provider: real controller, real
// S3 (s3rver), real agents in their own processes, real app processes answering HTTP.
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { closeProcessStack, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { makeKeys, pushApp, pushReleases, quietLog, tempDir, unhealthySpec, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { until } from '../helpers/agent.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let dir: string;

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-strategies-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({ s3, keys, launch: testLaunch(provider, s3) });
  await pushReleases({ store: s3.store, keys }, ['1.0.0', '2.0.0', '3.0.0']);
}, 60_000);

afterAll(() => closeProcessStack({ ctl, provider, s3, dir }), 60_000);

async function deployed(id: string, timeoutMs = 60_000): Promise<any> {
  let rec: any;
  await until(`deployment ${id} over`, async () => {
    rec = (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;
    return rec.state !== 'running';
  }, timeoutMs);
  return rec;
}

async function deploy(body: Record<string, unknown>): Promise<any> {
  const res = await ctl.api('POST', '/v1/deployments', { fleet: 'web', healthTimeoutMs: 20_000, ...body });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return deployed(res.body.deployment.id);
}

const status = async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body;
const serving = async (address: string) => (await fetch(address, { signal: AbortSignal.timeout(2_000) })).text();

describe('fleet strategies on the process provider', () => {
  it('refuses a fleet on a provider the controller does not run, and an image that does not exist', async () => {
    expect((await ctl.api('POST', '/v1/fleets', { name: 'other', app: 'web', provider: 'ec2', image: 'ami-1' })).body.error.code).toBe('KILN_REQUEST_INVALID');
    const missing = await ctl.api('POST', '/v1/fleets', { name: 'other', app: 'web', provider: 'process', image: 'img-nothere' });
    expect([missing.status, missing.body.error.code]).toEqual([404, 'KILN_IMAGE_NOT_FOUND']);
    const traversal = await ctl.api('POST', '/v1/fleets', { name: 'other', app: 'web', provider: 'process', image: '../../etc' });
    expect(traversal.body.error.code).toBe('KILN_IMAGE_NOT_FOUND');
  });

  it('bakes 1.0.0 and launches a group of 3 from the image: every instance runs it as baked, nothing downloaded at boot', async () => {
    const created = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', provider: 'process', size: 3 });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body.fleet.image).toBe('img-base');
    const rec = await deploy({ version: '1.0.0', strategy: 'bake' });
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
    expect(rec.group).toBe('web-v001');
    expect(rec.phases.map((p: any) => p.name)).toEqual(expect.arrayContaining(['bake', 'bake:launch', 'bake:install', 'bake:image', 'launch', 'health', 'live']));
    const image = (await ctl.api('GET', '/v1/images')).body.images.find((i: any) => i.id === rec.image);
    expect(image.tags).toMatchObject({ 'kiln:app': 'web', 'kiln:version': '1.0.0', 'kiln:base-image': 'img-base' });
    expect(image.tags['kiln:bake-phases']).toMatch(/launch=\d+,install=\d+/);
    // The builder is reaped, and so is the bake's private channel.
    expect((await provider.describeInstances({ 'kiln:role': 'builder' })).length).toBe(0);
    const st = await status();
    expect(st.summary.inSync).toBe(3);
    expect(st.instances.every((i: any) => i.via === 'baked' && i.image === '1.0.0' && i.group === 'web-v001')).toBe(true);
    const insts = await provider.describeInstances({ 'kiln:group': 'web-v001' });
    for (const i of insts) expect(await serving(i.address!)).toContain('1.0.0');
    // Launched from the baked image: the artifact is on disk only as the image's release, no download cache filled at boot.
    const root = path.join(dir, 'instances', insts[0]!.id, 'root');
    const state = JSON.parse(await readFile(path.join(root, 'var/lib/kiln/apps/web/state.json'), 'utf8'));
    expect(state.current.via).toBe('baked');
  }, 120_000);

  it('hotfixes 2.0.0 in place (drift: off-image), heals by baking 2.0.0 and replacing the group, then is in sync', async () => {
    const hot = await deploy({ version: '2.0.0', strategy: 'hotfix', batch: { percent: 100 } });
    expect(hot.state, JSON.stringify(hot)).toBe('succeeded');
    const drift = (await ctl.api('GET', '/v1/fleets/web/drift')).body;
    expect(drift.summary.offImage).toBe(3);
    const healed = await ctl.api('POST', '/v1/fleets/web/heal', { healthTimeoutMs: 20_000 });
    expect(healed.status, JSON.stringify(healed.body)).toBe(201);
    const rec = await deployed(healed.body.deployment.id);
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
    expect(rec.group).toBe('web-v002');
    const st = await status();
    expect(st.summary.inSync).toBe(3);
    expect(st.instances.every((i: any) => i.via === 'baked' && i.installed === '2.0.0')).toBe(true);
    const fleet = (await ctl.api('GET', '/v1/fleets/web')).body.fleet;
    expect(fleet.groups.map((g: any) => [g.name, g.state])).toEqual([['web-v001', 'standby'], ['web-v002', 'live']]);
    expect((await provider.describeInstances({ 'kiln:group': 'web-v001' })).every((i) => i.state === 'stopped')).toBe(true);
  }, 180_000);

  it('relaunches 3.0.0 from the 2.0.0 image: agents install it at boot; the group before the standby one is terminated', async () => {
    const rec = await deploy({ version: '3.0.0', strategy: 'relaunch' });
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
    const st = await status();
    expect(st.instances.map((i: any) => [i.installed, i.via, i.image])).toEqual(Array(3).fill(['3.0.0', 'boot', '2.0.0']));
    expect(await provider.describeInstances({ 'kiln:group': 'web-v001' })).toEqual([]);
    const fleet = (await ctl.api('GET', '/v1/fleets/web')).body.fleet;
    expect(fleet.groups.map((g: any) => [g.name, g.state])).toEqual([['web-v002', 'standby'], ['web-v003', 'live']]);
  }, 120_000);

  it('rolls back by bringing the stopped group back: 2.0.0 serves again, 3.0.0 group stopped', async () => {
    const res = await ctl.api('POST', '/v1/fleets/web/rollback', { healthTimeoutMs: 20_000 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const rec = await deployed(res.body.deployment.id);
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
    const st = await status();
    expect(st.instances.map((i: any) => [i.installed, i.group])).toEqual(Array(3).fill(['2.0.0', 'web-v002']));
    for (const i of await provider.describeInstances({ 'kiln:group': 'web-v002' })) expect(await serving(i.address!)).toContain('2.0.0');
    expect((await provider.describeInstances({ 'kiln:group': 'web-v003' })).every((i) => i.state === 'stopped')).toBe(true);
  }, 120_000);

  it('a new group that fails its health gate is removed; the live group stays live and the pointer goes back', async () => {
    // Its health check never passes: every agent swaps back to what it had and reports the failure.
    await pushApp({ store: s3.store, keys, version: '4.0.0', kilnJson: unhealthySpec(1_000) });
    const rec = await deploy({ version: '4.0.0', strategy: 'relaunch', healthTimeoutMs: 8_000 });
    expect(rec.state).toBe('failed');
    expect(rec.error.code).toBe('KILN_GROUP_UNHEALTHY');
    const fleet = (await ctl.api('GET', '/v1/fleets/web')).body.fleet;
    expect(fleet.groups.find((g: any) => g.state === 'live').name).toBe('web-v002');
    expect(fleet.groups.some((g: any) => g.name === rec.group)).toBe(false);
    expect(await provider.describeInstances({ 'kiln:group': rec.group })).toEqual([]);
    expect((await status()).summary.inSync).toBe(3);
    expect((await readdir(path.join(dir, 'instances'))).length).toBe(6); // v002 live + v003 standby
  }, 120_000);
});
