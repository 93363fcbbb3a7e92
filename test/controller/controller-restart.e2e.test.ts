// Durability: a controller killed (or closed) mid-rollout, and the next one on the same bucket that
// resumes it. Real controller processes, real agents, real S3; slow (a batch waits out a 20 s health
// timeout), so an e2e file.
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { Deployment } from '@kiln/controller';
import { createDocStore, createS3Client, readPointer } from '@kiln/shared';
import { deploymentOver as finished, fleetRows as rows, startController, startFleet, stillServing as serving } from '../helpers/controller.js';
import { startControllerProcess } from '../helpers/controller-process.js';
import { until } from '../helpers/agent.js';
import { STANDARD_RELEASES, makeKeys, pushReleases, tempDir, gatedSpec } from '../helpers/release.js';
import { startS3 } from '../helpers/s3.js';

const keys = makeKeys();
const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe('durability: a controller killed mid-rollout', () => {
  it('a new controller on the bucket resumes the record, the agents come back by themselves, and the verdict is the true one', async () => {
    const s3d = await startS3();
    cleanup.push(() => s3d.close());
    const dir = await tempDir('kiln-test-controller-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const gateD = path.join(dir, 'open');
    await pushReleases({ store: s3d.store, keys }, { ...STANDARD_RELEASES, '2.0.0': { kilnJson: gatedSpec(gateD, 15_000) } });
    let proc = await startControllerProcess({ s3: s3d, keys, dir });
    cleanup.push(() => proc.kill());
    const fleet = await startFleet({ s3: s3d, keys, ctl: proc, name: 'dur', count: 3 });
    cleanup.push(() => Promise.all(fleet.agents.map((a) => a.stop())));
    await until('3 agents on 1.0.0', async () => (await rows('dur', proc)).filter((r) => r.connected && r.installed === '1.0.0').length === 3);
    const created = (await proc.api('POST', '/v1/deployments', { fleet: 'dur', version: '2.0.0', batch: { count: 1 }, maxFailures: 1, healthTimeoutMs: 20_000 })).body.deployment;
    // the resumed rollout's clock for dur-1 starts when the new controller does, before the agents' reconnect
    // backoff has run out and the gate opens: 20 s keeps a loaded machine from failing dur-1 too
    await until('dur-1 at its health gate', async () => (await rows('dur', proc)).find((r) => r.instanceId === 'dur-1')?.operation === 'install 2.0.0 at health');

    await proc.kill('SIGKILL');
    // dur-3, in the last batch, goes away while no controller runs
    await fleet.agents[2]!.stop();
    await until('the agents notice', () => !fleet.agents[0]!.agent.connected && !fleet.agents[1]!.agent.connected, 5_000);
    // The agents' config names the killed one's address: the new controller comes back where it was.
    proc = await startControllerProcess({ s3: s3d, keys, port: proc.port, dir });
    expect((await proc.api('GET', `/v1/deployments/${created.id}`)).body.deployment).toMatchObject({ id: created.id, state: 'running', createdAt: created.createdAt });
    await until('dur-1 and dur-2 reconnect by themselves', async () => (await rows('dur', proc)).filter((r) => r.connected).length === 2, 10_000);
    await writeFile(gateD, '');
    const d = await finished(created.id, proc);
    expect(d.state, d.verdict).toBe('succeeded');
    expect(d.instances).toMatchObject({ 'dur-1': { step: 'healthy' }, 'dur-2': { step: 'healthy' }, 'dur-3': { step: 'failed', error: { code: 'KILN_AGENT_TIMEOUT' } } });
    expect(d.verdict).toBe('succeeded: 2 healthy on 2.0.0, 1 failed (within the limit of 1)');
    for (const a of fleet.agents.slice(0, 2)) expect(await a.serving()).toContain('kiln-demo 2.0.0');
    expect((await proc.api('GET', '/v1/deployments?fleet=dur')).body.deployments.map((x: any) => x.id)).toEqual([created.id]);
    expect((await rows('dur', proc)).map((r) => [r.instanceId, r.connected, r.installed])).toEqual([
      ['dur-1', true, '2.0.0'],
      ['dur-2', true, '2.0.0'],
    ]);
    await serving(proc);
  }, 120_000);
  it('regression: a controller closed mid-rollout writes nothing more; its record stays running for the next one, which finishes it', async () => {
    const s3g = await startS3();
    cleanup.push(() => s3g.close());
    const gateG = path.join(await tempDir('kiln-test-gate-'), 'open');
    cleanup.push(() => rm(path.dirname(gateG), { recursive: true, force: true }));
    const r2 = (await pushReleases({ store: s3g.store, keys }, { ...STANDARD_RELEASES, '2.0.0': { kilnJson: gatedSpec(gateG, 2_500) } }))['2.0.0']!;
    const first = await startController({ s3: s3g, keys });
    const fleet = await startFleet({ s3: s3g, keys, ctl: first, name: 'grace', count: 1 });
    cleanup.push(() => fleet.agents[0]!.stop());
    await until('grace-1 on 1.0.0', async () => (await rows('grace', first))[0]?.installed === '1.0.0');
    const created = (await first.api('POST', '/v1/deployments', { fleet: 'grace', version: '2.0.0', healthTimeoutMs: 2_500 })).body.deployment;
    await until('grace-1 at its health gate', async () => (await rows('grace', first))[0]?.operation === 'install 2.0.0 at health');
    const closing = Date.now();
    await first.close();
    expect(Date.now() - closing).toBeLessThan(2_000); // it closed its agents' sockets instead of waiting on them
    // The agent passes its health gate (its check may not outlast the controller's wait) with no controller to tell.
    await writeFile(gateG, '');
    await sleep(2_800); // past the health timeout of the closed controller's wait
    const docs = createDocStore(createS3Client(s3g.s3.location), s3g.s3.location.bucket, '');
    const [key] = await docs.list('controller/deployments/grace/');
    expect(JSON.parse(JSON.stringify(await docs.get(key!, Deployment)))).toMatchObject({ id: created.id, state: 'running', instances: { 'grace-1': { step: 'sent' } } });
    expect((await readPointer(s3g.store, 'web', 'stable', keys.keys)).manifestSha256).toBe(r2.manifestSha256);

    // The agent's config names the closed one's address: the next controller comes back where it was.
    const second = await startController({ s3: s3g, keys, port: first.port });
    cleanup.push(() => second.close());
    const d = await finished(created.id, second);
    expect(d.state, d.verdict).toBe('succeeded');
    await sleep(500);
    expect((await docs.get(key!, Deployment))?.state).toBe('succeeded');
    expect((await readPointer(s3g.store, 'web', 'stable', keys.keys)).manifestSha256).toBe(r2.manifestSha256);
  });
});
