import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startController, startFleet, type TestController } from '../helpers/controller.js';
import { until, type TestAgent } from '../helpers/agent.js';
import { promoteRelease, readPointer, signBytes } from '@kiln/shared';
import { STANDARD_RELEASES, makeKeys, pushApp, pushReleases, unhealthySpec } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: TestController;
const keys = makeKeys();
const agents: TestAgent[] = [];

beforeAll(async () => {
  s3 = await startS3();
  await pushReleases({ store: s3.store, keys }, { ...STANDARD_RELEASES, '3.0.0': { kilnJson: unhealthySpec(1_500) } });
  ctl = await startController({ s3, keys });
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()));
});

async function finished(id: string) {
  let d: any;
  await until(`deployment ${id} to finish`, async () => {
    d = (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;
    return d.state !== 'running';
  }, 40_000);
  return d;
}

describe('controller: hotfix rollouts over the agents', () => {
  it('hotfixes a fleet of 3 in batches, moves the pointer, shows status and drift, then rolls back', async () => {
    const fleet = await startFleet({ s3, keys, ctl, count: 3 });
    agents.push(...fleet.agents);
    await until('3 agents on 1.0.0', async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances.filter((r: any) => r.installed === '1.0.0' && r.connected).length === 3);
    const hub = ctl.server.kiln.hub;
    const command = hub.command;
    const sent: any[] = [];
    hub.command = (id, commandId, app, action) => (sent.push(action), command(id, commandId, app, action));
    const created = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '2.0.0', batch: { count: 2 }, healthTimeoutMs: 15_000 });
    expect(created.status).toBe(201);
    const d = await finished(created.body.deployment.id);
    expect(d.state, d.verdict).toBe('succeeded');
    expect(d.batches.map((b: string[]) => b.length)).toEqual([2, 1]);
    // Each install carries the signed manifest, so the agents do not fetch it.
    const signed = await s3.store.getManifest('web', '2.0.0');
    expect(sent.length).toBeGreaterThanOrEqual(3);
    for (const a of sent) expect(a).toMatchObject({ kind: 'install', version: '2.0.0', manifest: { bytes: signed.bytes.toString('base64'), sig: signed.sig.toString('base64') } });
    for (const a of fleet.agents) expect(await a.serving()).toContain('kiln-demo 2.0.0');
    const status = (await ctl.api('GET', '/v1/fleets/web/instances')).body;
    expect(status.fleet.desired.version).toBe('2.0.0');
    expect(status.instances.map((r: any) => [r.installed, r.via, r.drift])).toEqual(Array(3).fill(['2.0.0', 'hotfix', 'off-image']));
    const rb = await ctl.api('POST', '/v1/fleets/web/rollback', { batch: { percent: 100 } });
    expect(rb.status).toBe(201);
    const r = await finished(rb.body.deployment.id);
    expect(r.state, r.verdict).toBe('succeeded');
    for (const a of fleet.agents) expect(await a.serving()).toContain('kiln-demo 1.0.0');
  }, 60_000);

  it('stops at the failure limit, rolls the touched instances back and restores the pointer', async () => {
    // Its own channel: fleet web follows stable, and two fleets of an app never share one.
    await promoteRelease({ store: s3.store, app: 'web', version: '1.0.0', channel: 'api', key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });
    const fleet = await startFleet({ s3, keys, ctl, count: 2, name: 'api', channel: 'api' });
    agents.push(...fleet.agents);
    await until('2 agents', async () => (await ctl.api('GET', '/v1/fleets/api/instances')).body.instances.filter((r: any) => r.installed === '1.0.0').length === 2);
    const first = await ctl.api('POST', '/v1/deployments', { fleet: 'api', version: '2.0.0', batch: { percent: 100 } });
    expect(first.status, JSON.stringify(first.body)).toBe(201);
    const ok = await finished(first.body.deployment.id);
    expect(ok.state).toBe('succeeded');
    const bad = await finished((await ctl.api('POST', '/v1/deployments', { fleet: 'api', version: '3.0.0', batch: { count: 1 }, healthTimeoutMs: 10_000 })).body.deployment.id);
    expect(bad.state).toBe('failed');
    expect(bad.error.code).toBe('KILN_DEPLOY_FAILED');
    expect(Object.values(bad.instances).map((i: any) => i.step).sort()).toEqual(['pending', 'rolled-back']);
    for (const a of fleet.agents) expect(await a.serving()).toContain('kiln-demo 2.0.0');
    // An explicit older version goes out as a rollback: the agents would refuse a lower seq to install.
    const older = await finished((await ctl.api('POST', '/v1/deployments', { fleet: 'api', version: '1.0.0', batch: { percent: 100 } })).body.deployment.id);
    expect(older.state, older.verdict).toBe('succeeded');
    for (const a of fleet.agents) expect(await a.serving()).toContain('kiln-demo 1.0.0');
  }, 60_000);

  it('refuses a release signed by a key it does not trust with 422, before the pointer moves', async () => {
    await pushApp({ store: s3.store, keys: makeKeys(), version: '9.0.0' });
    await promoteRelease({ store: s3.store, app: 'web', version: '1.0.0', channel: 'signed', key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });
    expect((await ctl.api('POST', '/v1/fleets', { name: 'signed', app: 'web', channel: 'signed' })).status).toBe(201);
    const before = await readPointer(s3.store, 'web', 'signed', keys.keys);
    const r = await ctl.api('POST', '/v1/deployments', { fleet: 'signed', version: '9.0.0' });
    expect([r.status, r.body.error.code]).toEqual([422, 'KILN_SIGNATURE_INVALID']);
    expect(await readPointer(s3.store, 'web', 'signed', keys.keys)).toEqual(before);
  });

  it('a pointer with a bad signature is not read as no pointer: the deployment is refused with its code, nothing moves', async () => {
    // The fleet comes first, on a channel with no pointer yet: the deployment asks the channel what to go back to.
    await ctl.api('POST', '/v1/fleets', { name: 'tampered', app: 'web', channel: 'tampered' });
    await promoteRelease({ store: s3.store, app: 'web', version: '1.0.0', channel: 'tampered', key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });
    const good = await s3.store.getPointer('web', 'tampered');
    await s3.store.putPointer('web', 'tampered', { bytes: good.bytes, sig: signBytes(Buffer.from('other bytes'), keys.key) });
    const r = await ctl.api('POST', '/v1/deployments', { fleet: 'tampered', version: '2.0.0' });
    expect([r.status, r.body.error?.code]).toEqual([422, 'KILN_SIGNATURE_INVALID']);
    expect((await ctl.api('GET', '/v1/deployments?fleet=tampered')).body.deployments).toEqual([]);
    expect((await s3.store.getPointer('web', 'tampered')).bytes).toEqual(good.bytes);
  });
});
