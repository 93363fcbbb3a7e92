// Issue 12: zero downtime. A real HAProxy in front of a fleet of 3 on the process provider (real
// agents, real apps answering HTTP), clients calling the fleet's endpoint all along: a hotfix and a
// relaunch drop no request (counted, not timed); a canary group pauses, is promoted, another is
// aborted; --max-error-rate trips on an app that answers 500; a soak catches an app that crashes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, findHaproxy, startHaproxy, type Haproxy, type Provider } from '@kiln/controller';
import { closeProcessStack, deploymentOver, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { makeKeys, pushApp, pushReleases, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { loadLoop } from '../helpers/traffic.js';

const binary = await findHaproxy(process.env);
if (!binary) console.warn('traffic e2e skipped: no haproxy on PATH or in /usr/sbin (apt-get install haproxy; .ci/run installs it)');

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let haproxy: Haproxy;
let dir: string;
let endpoint: string;

/** An app whose every answer but /healthz is a 500: healthy to kiln's gate, failing its users. */
const FAILING_APP = `require('node:http').createServer((q, s) => { s.statusCode = q.url === '/healthz' ? 200 : 500; s.end('x'); }).listen(Number(process.env.PORT), '127.0.0.1');`;
/**
 * An app that passes its health check, crashes 1.5 s after it started, and from then on at every
 * start (a marker beside its releases): down until rolled back, whatever the restart backoff.
 */
const CRASHING_APP = `const fs = require('node:fs'); const marker = require('node:path').join(process.env.KILN_RELEASE_DIR, '../../crashed-once');
if (fs.existsSync(marker)) process.exit(3);
require('./server.js'); setTimeout(() => (fs.writeFileSync(marker, ''), process.exit(3)), 1500);`;

beforeAll(async () => {
  if (!binary) return;
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-traffic-');
  provider = createProcessProvider({ dir, log: quietLog() });
  haproxy = await startHaproxy({ dir: `${dir}/haproxy`, log: quietLog(), binary });
  ctl = await startController({ s3, keys, launch: testLaunch(provider, s3), balancers: { local: haproxy } });
  await pushReleases({ store: s3.store, keys }, ['1.0.0', '2.0.0', '3.0.0', '4.0.0', '5.0.0']);
  await pushApp({ store: s3.store, keys, version: '6.0.0-500', extra: { 'fail.js': FAILING_APP }, kilnJson: { service: { command: ['node', 'fail.js'] }, health: { type: 'http', path: '/healthz', timeoutMs: 10_000 } } });
  await pushApp({ store: s3.store, keys, version: '7.0.0-crash', extra: { 'crash.js': CRASHING_APP }, kilnJson: { service: { command: ['node', 'crash.js'] }, health: { type: 'http', path: '/healthz', timeoutMs: 10_000 } } });
  const created = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', provider: 'process', size: 3 });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  endpoint = created.body.fleet.endpoint;
  expect(endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
  const bake = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', strategy: 'bake', healthTimeoutMs: 20_000 });
  expect((await deploymentOver(bake.body.deployment.id, ctl, 60_000)).state).toBe('succeeded');
}, 120_000);

afterAll(async () => {
  await closeProcessStack({ ctl, provider });
  await haproxy?.close();
  await closeProcessStack({ s3, dir });
}, 60_000);

async function deploy(body: Record<string, unknown>): Promise<any> {
  const res = await ctl.api('POST', '/v1/deployments', { fleet: 'web', healthTimeoutMs: 20_000, ...body });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body.deployment;
}

/**
 * Samples the balancer every 25 ms until stopped: the most servers of the fleet that were not taking
 * requests at once, and the states each was seen in.
 */
function sampleBalancer(ids: string[]): { stop(): Promise<{ most: number; states: Record<string, string[]> }> } {
  let most = 0;
  let running = true;
  const states: Record<string, Set<string>> = Object.fromEntries(ids.map((id) => [id, new Set<string>()]));
  const loop = (async () => {
    while (running) {
      const health = await haproxy.balancer('web').health(ids);
      for (const [id, h] of health) states[id]?.add(h.state);
      most = Math.max(most, [...health.values()].filter((h) => h.state !== 'healthy').length);
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { most, states: Object.fromEntries(Object.entries(states).map(([id, set]) => [id, [...set].sort()])) };
    },
  };
}

const liveIds = async () => (await ctl.api('GET', '/v1/fleets/web')).body.fleet.groups.find((g: any) => g.state === 'live').instances as string[];

describe.skipIf(!binary)('deployments behind HAProxy', () => {
  it('a hotfix with --batch 1 under load: 0 failed requests, never more than 1 instance out of the balancer', async () => {
    const ids = await liveIds();
    const load = loadLoop(endpoint);
    const sampler = sampleBalancer(ids);
    await new Promise((r) => setTimeout(r, 500));
    const d = await deploy({ version: '2.0.0', batch: { count: 1 } });
    expect(d.balancer).toBe(endpoint);
    const done = await deploymentOver(d.id, ctl, 60_000);
    await new Promise((r) => setTimeout(r, 300));
    const [seen, { most, states }] = await Promise.all([load.stop(), sampler.stop()]);
    expect(done.state, done.verdict).toBe('succeeded');
    expect(Object.fromEntries(seen.failures)).toEqual({});
    expect(seen.ok).toBeGreaterThan(200);
    expect(most).toBe(1);
    // Each instance was taken out of the balancer (drained: out before its app restarted), and came back.
    for (const id of ids) expect(states[id], id).toEqual(expect.arrayContaining(['healthy', 'unused']));
    // It served both versions along the way and ends on the new one.
    expect([...seen.bodies.keys()].sort()).toEqual(['hello from kiln-demo 1.0.0', 'hello from kiln-demo 2.0.0']);
    const after = await (await fetch(endpoint)).text();
    expect(after).toContain('2.0.0');
  }, 90_000);

  it('a relaunch under load: the new group serves before the old one drains and stops; 0 failed requests', async () => {
    const before = await liveIds();
    const load = loadLoop(endpoint);
    await new Promise((r) => setTimeout(r, 300));
    const done = await deploymentOver((await deploy({ version: '3.0.0', strategy: 'relaunch' })).id, ctl, 60_000);
    await new Promise((r) => setTimeout(r, 300));
    const seen = await load.stop();
    expect(done.state, done.verdict).toBe('succeeded');
    expect(Object.fromEntries(seen.failures)).toEqual({});
    expect(seen.bodies.get('hello from kiln-demo 3.0.0')).toBeGreaterThan(0);
    // The old group is out of the balancer (and stopped): every server there is the new group's.
    const health = await haproxy.balancer('web').health([...before, ...(await liveIds())]);
    expect(before.map((id) => health.get(id)?.state)).toEqual(['unused', 'unused', 'unused']);
    expect((await liveIds()).map((id) => health.get(id)?.state)).toEqual(['healthy', 'healthy', 'healthy']);
  }, 90_000);

  it('a relaunch --canary 1 serves a group of 1 next to the old one and pauses; promoted, the rest follows; 0 failed requests', async () => {
    const load = loadLoop(endpoint);
    const d = await deploy({ version: '4.0.0', strategy: 'relaunch', canary: 1 });
    let paused: any;
    await expect.poll(async () => (paused = (await ctl.api('GET', `/v1/deployments/${d.id}`)).body.deployment).state, { timeout: 30_000, interval: 100 }).toBe('paused');
    // Both serve while paused: the old group of 3 and the canary.
    load.reset();
    await new Promise((r) => setTimeout(r, 1_000));
    expect([...load.seen.bodies.keys()].sort()).toEqual(['hello from kiln-demo 3.0.0', 'hello from kiln-demo 4.0.0']);
    expect(Object.keys(paused.instances)).toHaveLength(1);
    expect((await ctl.api('POST', `/v1/deployments/${d.id}/promote`)).status).toBe(200);
    const done = await deploymentOver(d.id, ctl, 60_000);
    const seen = await load.stop();
    expect(done.state, done.verdict).toBe('succeeded');
    expect(Object.keys(done.instances)).toHaveLength(3);
    expect(done.phases.map((p: any) => p.name)).toContain('paused');
    expect(Object.fromEntries(seen.failures)).toEqual({});
  }, 90_000);

  it('a relaunch --canary 1 aborted: the canary is drained and terminated, the live group serves alone; 0 failed requests', async () => {
    const live = await liveIds();
    const load = loadLoop(endpoint);
    const d = await deploy({ version: '5.0.0', strategy: 'relaunch', canary: 1 });
    await expect.poll(async () => (await ctl.api('GET', `/v1/deployments/${d.id}`)).body.deployment.state, { timeout: 30_000, interval: 100 }).toBe('paused');
    expect((await ctl.api('POST', `/v1/deployments/${d.id}/abort`)).status).toBe(200);
    const done = await deploymentOver(d.id, ctl, 60_000);
    load.reset();
    await new Promise((r) => setTimeout(r, 500));
    const seen = await load.stop();
    expect(done.state).toBe('failed');
    expect(done.error.code).toBe('KILN_DEPLOY_ABORTED');
    expect(await liveIds()).toEqual(live);
    expect([...seen.bodies.keys()]).toEqual(['hello from kiln-demo 4.0.0']);
    expect(Object.fromEntries(seen.failures)).toEqual({});
    const canary = Object.keys(done.instances)[0]!;
    expect((await haproxy.balancer('web').health([canary])).get(canary)?.state).toBe('unused');
    expect((await provider.describeInstances({ 'kiln:fleet': 'web' })).map((i) => i.id)).not.toContain(canary);
  }, 90_000);

  it('--max-error-rate: a release that answers 500 fails its soak with KILN_ERROR_RATE and is rolled back, batch by batch', async () => {
    const load = loadLoop(endpoint);
    const d = await deploy({ version: '6.0.0-500', batch: { count: 1 }, soakMs: 1_500, maxErrorRate: 0.05 });
    const done = await deploymentOver(d.id, ctl, 60_000);
    load.reset();
    await new Promise((r) => setTimeout(r, 500));
    const after = await load.stop();
    expect(done.state).toBe('failed');
    expect(done.error.code).toBe('KILN_ERROR_RATE');
    const [soak] = done.soaks;
    expect(soak).toMatchObject({ batch: 0, passed: false });
    expect(soak.newTargets.errors5xx).toBeGreaterThan(0);
    expect(soak.newTargets.errors5xx).toBe(soak.newTargets.requests);
    expect(soak.oldTargets).toMatchObject({ errors5xx: 0 });
    expect(soak.oldTargets.requests).toBeGreaterThan(0);
    expect(done.verdict).toContain('touched instances rolled back to 4.0.0');
    // Only the first batch was touched, and it is back: nothing answers 500 any more.
    expect(Object.values(done.instances).map((i: any) => i.step).sort()).toEqual(['pending', 'pending', 'rolled-back']);
    expect(Object.fromEntries(after.failures)).toEqual({});
  }, 90_000);

  it('--soak: an app that crashes after its health check fails the batch with KILN_SOAK_FAILED and is rolled back', async () => {
    const d = await deploy({ version: '7.0.0-crash', batch: { count: 1 }, soakMs: 4_000 });
    const done = await deploymentOver(d.id, ctl, 60_000);
    expect(done.state).toBe('failed');
    expect(done.error.code).toBe('KILN_SOAK_FAILED');
    expect(done.soaks[0]).toMatchObject({ passed: false, reason: expect.stringMatching(/during the soak/) });
    expect(done.soaks[0].ms).toBeLessThan(4_000);
    const health = await haproxy.balancer('web').health(await liveIds());
    expect([...health.values()].map((h) => h.state)).toEqual(['healthy', 'healthy', 'healthy']);
  }, 90_000);
});
