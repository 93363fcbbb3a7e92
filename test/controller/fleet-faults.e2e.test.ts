// The faults and bad input of bake, relaunch and heal on the process provider: each ends with a
// clear error code and nothing lost or leaked. Real controller, S3 (s3rver), agents in their own
// processes, apps answering HTTP; the one injected fault is a real provider call that fails.
import { randomBytes } from 'node:crypto';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { createProcessProvider, type LaunchOptions, type LaunchSpec, type Provider } from '@kiln/controller';
import { KilnError, createDocStore, createS3Client, readPointer, showRelease } from '@kiln/shared';
import { startController, type TestController } from '../helpers/controller.js';
import { makeAgent, until } from '../helpers/agent.js';
import { agentKey, helloFrame, nonceOf } from '../helpers/raw-agent.js';
import { FAST_LAUNCHED_AGENT } from '../helpers/fast-agent.js';
import { gatedSpec, makeKeys, pushApp, pushReleases, quietLog, tempDir, unhealthySpec, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let real: Provider;
let dir: string;
const agentSecret = randomBytes(32);
/** calls of the provider that fail on demand, after doing their work (like a wait that gives up late) */
const faults = { createImage: false, terminate: false };
const launches: LaunchSpec[] = [];

/** The real process provider with its launches counted and one call made to fail on demand. */
function withFaults(p: Provider): Provider {
  return {
    ...p,
    launch: (spec) => (launches.push(spec), p.launch(spec)),
    async createImage(id, spec, opts) {
      const image = await p.createImage(id, spec, opts);
      if (faults.createImage) throw new KilnError('KILN_PROVIDER_FAILED', `injected: waiting for ${image.id} gave up`);
      return image;
    },
    async terminate(ids) {
      if (faults.terminate && ids.length) throw new KilnError('KILN_PROVIDER_FAILED', `injected: cannot terminate ${ids.join(', ')}`);
      return p.terminate(ids);
    },
  };
}

const launchOptions = (): LaunchOptions => ({
  provider: withFaults(real),
  agentSecret,
  s3: s3.s3.location,
  agentSettings: FAST_LAUNCHED_AGENT,
  bakeTimeouts: { launchMs: 15_000, installMs: 30_000, imageMs: 15_000 },
  launchTimeoutMs: 15_000,
});

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-fleet-faults-');
  real = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({ s3, keys, launch: launchOptions() });
  await pushReleases({ store: s3.store, keys }, { '1.0.0': {}, '2.0.0': {}, '3.0.0': { kilnJson: unhealthySpec(1_000) } });
}, 60_000);

afterAll(async () => {
  faults.terminate = false;
  await ctl?.close();
  await real?.terminate((await real.describeInstances({})).map((i) => i.id));
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
}, 60_000);

async function finished(kind: 'deployments' | 'bakes', id: string, timeoutMs = 45_000): Promise<any> {
  let rec: any;
  await until(`${kind} ${id} over`, async () => {
    const res = await ctl.api('GET', `/v1/${kind}/${id}`);
    // s3rver writes an object in place: a record read while it is written does not parse (S3 itself swaps it whole).
    if (res.status === 500 && res.body.error.code === 'KILN_STATE_INVALID') return false;
    rec = res.body[kind === 'bakes' ? 'bake' : 'deployment'];
    if (!rec) throw new Error(`GET /v1/${kind}/${id}: ${res.status} ${JSON.stringify(res.body)}`);
    return rec.state !== 'running';
  }, timeoutMs);
  return rec;
}

async function started(what: string, body: Record<string, unknown>): Promise<any> {
  const res = await ctl.api('POST', what, body);
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body.deployment ?? res.body.bake;
}

const bake = async (body: Record<string, unknown>) => finished('bakes', (await started('/v1/bakes', { app: 'web', baseImage: 'img-base', ...body })).id);
const deploy = async (body: Record<string, unknown>) => finished('deployments', (await started('/v1/deployments', { fleet: 'web', healthTimeoutMs: 15_000, ...body })).id);
const fleet = async (name = 'web') => (await ctl.api('GET', `/v1/fleets/${name}`)).body.fleet;
const status = async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body;
const channels = async () => createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket).list('channels/web/');
const pointer = async (channel = 'stable') => (await readPointer(s3.store, 'web', channel, keys.keys)).version;

/** Builders by their records on disk: a terminated instance has no directory left. */
async function builderDirs(): Promise<string[]> {
  const found: string[] = [];
  for (const id of await readdir(path.join(dir, 'instances')).catch(() => [])) {
    const rec = JSON.parse(await readFile(path.join(dir, 'instances', id, 'instance.json'), 'utf8').catch(() => '{}'));
    if (rec.tags?.['kiln:role'] === 'builder') found.push(id);
  }
  return found;
}

/** What a failed bake made is gone: its builder, every image with its bake id, its private channel. */
async function expectReaped(bakeId: string): Promise<void> {
  expect(await real.describeInstances({ 'kiln:bake-id': bakeId })).toEqual([]);
  expect(await builderDirs()).toEqual([]);
  expect(await real.describeImages({ tags: { 'kiln:bake-id': bakeId } })).toEqual([]);
  expect((await channels()).filter((k) => k.includes('/bake-'))).toEqual([]);
}
const lastBakeId = () => launches.filter((l) => l.tags['kiln:role'] === 'builder').at(-1)!.tags['kiln:bake-id']!;

describe('fleet faults on the process provider', () => {
  it('bad input is refused with a code that names it, and nothing is launched', async () => {
    const plain = await ctl.api('POST', '/v1/fleets', { name: 'plain', app: 'web', channel: 'plain' });
    expect(plain.status).toBe(201);
    const refused = async (method: string, url: string, body: unknown, status: number, code: string, names?: RegExp, token?: string) => {
      const res = await ctl.api(method, url, body, token);
      expect([res.status, res.body.error.code], `${method} ${url} ${JSON.stringify(body)}`).toEqual([status, code]);
      if (names) expect(res.body.error.message).toMatch(names);
    };
    await refused('POST', '/v1/deployments', { fleet: 'plain', version: '1.0.0', strategy: 'bake' }, 400, 'KILN_REQUEST_INVALID', /provider/);
    await refused('POST', '/v1/deployments', { fleet: 'plain', version: '1.0.0', strategy: 'rolling' }, 400, 'KILN_REQUEST_INVALID', /strategy/);
    await refused('POST', '/v1/bakes', { app: 'web', version: '1.0.0' }, 400, 'KILN_REQUEST_INVALID', /baseImage/);
    await refused('POST', '/v1/bakes', { app: '../etc', version: '1.0.0', baseImage: 'img-base' }, 400, 'KILN_REQUEST_INVALID', /app/);
    await refused('POST', '/v1/bakes', { app: 'web', version: '1.0.0', baseImage: 'img-base', regions: ['EU WEST'] }, 400, 'KILN_REQUEST_INVALID', /regions/);
    await refused('GET', '/v1/bakes/nope', undefined, 404, 'KILN_DEPLOYMENT_NOT_FOUND');
    await refused('GET', '/v1/bakes/k-zz-000000', undefined, 404, 'KILN_DEPLOYMENT_NOT_FOUND');
    // An agent's credential and a builder's are no operator's; a builder's is good for its app only.
    await refused('GET', '/v1/images', undefined, 403, 'KILN_FORBIDDEN', undefined, plain.body.agentCredential);
    const builder = ctl.server.kiln.fleets.builderCredential('web');
    await refused('GET', '/v1/fleets', undefined, 403, 'KILN_FORBIDDEN', undefined, builder);
    await refused('POST', '/v1/bakes', { app: 'web', version: '1.0.0', baseImage: 'img-base' }, 403, 'KILN_FORBIDDEN', undefined, builder);
    await refused('GET', '/v1/fleets', undefined, 401, 'KILN_UNAUTHORIZED', undefined, builder.replace('kfb_web.', 'kfb_api.'));
    const other = await makeAgent({ s3, keys, config: { app: 'api' } });
    const report = await other.agent.report();
    const ws = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${builder}`, 'x-kiln-instance': report.instanceId } });
    const answer = new Promise<any>((resolve, reject) => (ws.once('message', (d) => resolve(JSON.parse(d.toString()))), ws.once('error', reject)));
    const nonce = await nonceOf(ws);
    ws.send(helloFrame({ key: agentKey(), nonce, instanceId: report.instanceId, report }));
    expect((await answer).error.code).toBe('KILN_FORBIDDEN');
    ws.close();
    expect(ctl.server.kiln.hub.get(report.instanceId)?.report ?? null).toBeNull();
    expect(launches).toEqual([]);
    await rm(other.root, { recursive: true, force: true });
  });

  it('a bake from a base image that does not exist gets 404 KILN_IMAGE_NOT_FOUND before anything is recorded or launched', async () => {
    for (const baseImage of ['img-nothere', '../../etc']) {
      const res = await ctl.api('POST', '/v1/bakes', { app: 'web', version: '1.0.0', baseImage });
      expect([res.status, res.body.error.code]).toEqual([404, 'KILN_IMAGE_NOT_FOUND']);
    }
    expect(await createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket).list('controller/bakes/')).toEqual([]);
    expect(launches).toEqual([]);
  });

  it('baking the same version from the same base again is skipped: the same image, no builder; a deploy with --strategy bake finds it too', async () => {
    // The process provider makes its plain base image (img-base) for the first fleet that has no image.
    expect((await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', channel: 'stable', provider: 'process', size: 2 })).status).toBe(201);
    const first = await bake({ version: '1.0.0' });
    expect([first.state, first.skipped], JSON.stringify(first)).toEqual(['succeeded', false]);
    expect(launches).toHaveLength(1);
    const again = await bake({ version: '1.0.0' });
    expect([again.state, again.skipped, again.image]).toEqual(['succeeded', true, first.image]);
    expect(launches).toHaveLength(1);
    const rec = await deploy({ version: '1.0.0', strategy: 'bake' });
    expect([rec.state, rec.image], JSON.stringify(rec)).toEqual(['succeeded', first.image]);
    expect(launches.map((l) => l.tags['kiln:role'] ?? l.tags['kiln:group'])).toEqual(['builder', 'web-v001']);
    expect((await status()).summary.inSync).toBe(2);
  }, 60_000);

  it('a builder that never becomes healthy: KILN_BAKE_FAILED naming phase install; builder, images and its channel reaped', async () => {
    const rec = await bake({ version: '3.0.0' });
    expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_BAKE_FAILED']);
    expect(rec.error.message).toMatch(/failed in phase install: KILN_HEALTH/);
    await expectReaped(lastBakeId());
  }, 60_000);

  it('a builder that crashes mid-install (its processes killed): KILN_BAKE_FAILED naming phase install as soon as the provider sees it stopped; reaped', async () => {
    // Slow to be healthy: the builder sits in its health check until it is killed.
    await pushApp({ store: s3.store, keys, version: '6.0.0', kilnJson: gatedSpec(path.join(dir, 'gate-crash'), 60_000) });
    const { id } = await started('/v1/bakes', { app: 'web', version: '6.0.0', baseImage: 'img-base' });
    let builder = '';
    await until('the builder at its health check', async () => {
      builder = (await real.describeInstances({ 'kiln:role': 'builder' }))[0]?.id ?? '';
      return !!builder && ctl.server.kiln.hub.get(builder)?.report?.operation?.step === 'health';
    }, 20_000);
    const { pid } = JSON.parse(await readFile(path.join(dir, 'instances', builder, 'instance.json'), 'utf8'));
    process.kill(-pid, 'SIGKILL'); // the agent and the app it started: the machine's power cut
    const rec = await finished('bakes', id);
    expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_BAKE_FAILED']);
    // Not the install deadline (30 s, "within … ms"): the provider said the builder stopped.
    expect(rec.error.message).toMatch(new RegExp(`failed in phase install: KILN_PROVIDER_FAILED: the builder ${builder} is stopped: it stopped running during the install`));
    await expectReaped(lastBakeId());
  }, 60_000);

  it('a provider call that fails mid-bake (createImage, copyImage): KILN_BAKE_FAILED naming the phase; the builder and the image it made reaped', async () => {
    faults.createImage = true;
    try {
      const rec = await bake({ version: '2.0.0' });
      expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_BAKE_FAILED']);
      expect(rec.error.message).toMatch(/failed in phase image: KILN_PROVIDER_FAILED: injected/);
      await expectReaped(lastBakeId());
    } finally {
      faults.createImage = false;
    }
    // The process provider has no regions: its copy fails after the image was made.
    const copied = await bake({ version: '2.0.0', regions: ['eu-west-1'] });
    expect(copied.error?.message, JSON.stringify(copied)).toMatch(/failed in phase copy: KILN_PROVIDER_FAILED/);
    await expectReaped(lastBakeId());
    expect((await real.describeImages({ tags: { 'kiln:version': '2.0.0' } })).length).toBe(0);
  }, 60_000);

  it('heal while an instance is unreachable: the drifted one is replaced, the unreachable one named, and the heal fails with KILN_AGENT_UNREACHABLE', async () => {
    const [dead, drifted] = (await fleet()).groups[0].instances as string[];
    const rec = JSON.parse(await readFile(path.join(dir, 'instances', dead!, 'instance.json'), 'utf8'));
    process.kill(rec.pid, 'SIGKILL');
    const { manifest, manifestSha256 } = await showRelease(s3.store, 'web', '2.0.0', keys.keys);
    ctl.server.kiln.hub.command(drifted!, 'test-hotfix-1', 'web', { kind: 'install', version: '2.0.0', seq: manifest.seq, manifestSha256 });
    await until('one unreachable, one drifted', async () => {
      const { summary } = (await ctl.api('GET', '/v1/fleets/web/drift')).body;
      return summary.unreachable === 1 && summary.drifted === 1;
    });
    const healed = await finished('deployments', (await started('/v1/fleets/web/heal', { healthTimeoutMs: 15_000 })).id);
    expect([healed.state, healed.error?.code], JSON.stringify(healed)).toEqual(['failed', 'KILN_AGENT_UNREACHABLE']);
    expect(healed.instances[dead!].step).toBe('unreachable');
    expect(healed.verdict).toMatch(new RegExp(`^not healed: 1 instance\\(s\\) unreachable \\(no agent reports to this controller\\): ${dead}; 1 drifted instance\\(s\\) replaced`));
    const group = (await fleet()).groups[0];
    expect(group.instances).toHaveLength(2);
    expect(group.instances).toContain(dead);
    expect(group.instances).not.toContain(drifted);
    expect((await real.describeInstances({})).map((i) => i.id)).not.toContain(drifted);
    const { summary } = await status();
    expect([summary.inSync, summary.unreachable]).toEqual([1, 1]);
  }, 60_000);

  it('a deploy or heal of a fleet while another deploy runs gets 409 KILN_FLEET_BUSY', async () => {
    const running = await started('/v1/deployments', { fleet: 'web', version: '2.0.0', strategy: 'relaunch', healthTimeoutMs: 15_000 });
    for (const [url, body] of [
      ['/v1/deployments', { fleet: 'web', version: '2.0.0', strategy: 'hotfix' }],
      ['/v1/deployments', { fleet: 'web', version: '1.0.0', strategy: 'relaunch' }],
      ['/v1/fleets/web/heal', {}],
    ] as const) {
      const res = await ctl.api('POST', url, body);
      expect([res.status, res.body.error?.code], url).toEqual([409, 'KILN_FLEET_BUSY']);
    }
    const rec = await finished('deployments', running.id);
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
    expect((await fleet()).groups.map((g: any) => [g.name, g.state])).toEqual([['web-v001', 'standby'], ['web-v002', 'live']]);
  }, 60_000);

  it('--strategy bake whose new group fails its health gate: the group is removed, the old one stays live, the pointer goes back', async () => {
    const gate = path.join(dir, 'gate-4');
    await writeFile(gate, '');
    await pushApp({ store: s3.store, keys, version: '4.0.0', kilnJson: gatedSpec(gate, 1_500) });
    const before = await fleet();
    const run = await started('/v1/deployments', { fleet: 'web', version: '4.0.0', strategy: 'bake', healthTimeoutMs: 10_000 });
    // Healthy on the builder; not on the instances launched from its image.
    await until('the builder sealed', async () => (await ctl.api('GET', `/v1/deployments/${run.id}`)).body.deployment.phases.some((p: any) => p.name === 'bake:install'), 30_000);
    await rm(gate);
    const rec = await finished('deployments', run.id);
    expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_GROUP_UNHEALTHY']);
    const after = await fleet();
    expect(after.groups).toEqual(before.groups);
    expect(after.image).toBe(before.image);
    expect(await real.describeInstances({ 'kiln:group': rec.group })).toEqual([]);
    expect(await pointer()).toBe('2.0.0');
    expect(await builderDirs()).toEqual([]);
    expect((await status()).summary.inSync).toBe(2);
  }, 60_000);

  it('a controller stopped mid-relaunch and mid-bake, unable to reap: the next one marks them KILN_INTERRUPTED and reaps; the live group stays live', async () => {
    expect((await ctl.api('POST', '/v1/fleets', { name: 'edge', app: 'web', channel: 'edge', provider: 'process', size: 1 })).status).toBe(201);
    // Never healthy, but slow to say so: the health phase lasts until the controller is gone.
    await pushApp({ store: s3.store, keys, version: '5.0.0', kilnJson: gatedSpec(path.join(dir, 'gate-never'), 6_000) });
    const relaunch = await started('/v1/deployments', { fleet: 'web', version: '5.0.0', strategy: 'relaunch', healthTimeoutMs: 30_000 });
    const baking = await started('/v1/deployments', { fleet: 'edge', version: '5.0.0', strategy: 'bake', healthTimeoutMs: 30_000 });
    const standalone = await started('/v1/bakes', { app: 'web', version: '5.0.0', baseImage: 'img-base' });
    const phases = async (kind: string, id: string) => {
      const { body } = await ctl.api('GET', `/v1/${kind}/${id}`);
      return (body.deployment ?? body.bake).phases.map((p: any) => p.name);
    };
    await until('the relaunch in its health phase, both builders running', async () => (await phases('deployments', relaunch.id)).includes('launch') && (await phases('deployments', baking.id)).includes('bake:launch') && (await phases('bakes', standalone.id)).includes('launch'), 30_000);
    const group = (await ctl.api('GET', `/v1/deployments/${relaunch.id}`)).body.deployment.group;
    faults.terminate = true;
    await ctl.close();
    faults.terminate = false;
    expect(await builderDirs()).toHaveLength(2);
    expect(await real.describeInstances({ 'kiln:group': group })).toHaveLength(2);
    // Back before the controller went: the live group's agents follow the pointer while it is away.
    expect(await pointer()).toBe('2.0.0');

    // Same port: the agents find the new controller where the old one was. It reaps after it listens.
    ctl = await startController({ s3, keys, port: ctl.port, launch: launchOptions() });
    for (const [kind, id] of [['bakes', standalone.id], ['deployments', baking.id], ['deployments', relaunch.id]] as const) {
      const rec = await finished(kind, id);
      expect([rec.state, rec.error?.code], JSON.stringify(rec)).toEqual(['failed', 'KILN_INTERRUPTED']);
    }
    expect(await builderDirs()).toEqual([]);
    expect(await real.describeInstances({ 'kiln:group': group })).toEqual([]);
    expect(await real.describeImages({ tags: { 'kiln:version': '5.0.0' } })).toEqual([]);
    expect((await channels()).filter((k) => k.includes('/bake-'))).toEqual([]);
    expect((await fleet()).groups.map((g: any) => [g.name, g.state])).toEqual([['web-v001', 'standby'], ['web-v002', 'live']]);
    expect((await fleet('edge')).groups).toEqual([]);
    expect(await pointer()).toBe('2.0.0');
    // The live group's agents come back to the new controller, still on 2.0.0: none followed the pointer while it was away.
    await until('the live group in sync again', async () => (await status()).summary.inSync === 2, 20_000);
    expect((await status()).instances.map((i: any) => [i.installed, i.via])).toEqual(Array(2).fill(['2.0.0', 'boot']));
  }, 90_000);
});
