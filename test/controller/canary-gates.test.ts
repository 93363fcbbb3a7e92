// Issue 12, item 3: canaries that wait. A hotfix with --canary N installs the first N instances, then
// pauses until `kiln deployments promote` (or --canary-wait passes, or `abort` rolls it back). Real
// controller, real S3, real agents and apps; no balancer here (the HAProxy e2e file drains).
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPointer } from '@kiln/shared';
import { OPERATOR, deploymentOver, fleetRows, startController, startFleet, type TestController } from '../helpers/controller.js';
import { kilnHere } from '../helpers/cli.js';
import { until, type TestAgent } from '../helpers/agent.js';
import { makeKeys, pushReleases, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: TestController;
let cwd: string;
let agents: TestAgent[] = [];
const keys = makeKeys();

const cli = (...args: string[]) => kilnHere(args, { cwd, env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR } });
const installed = async () => Object.fromEntries((await fleetRows('web', ctl)).map((r: any) => [r.instanceId, r.installed]));
const deployment = async (id: string) => (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;

beforeAll(async () => {
  s3 = await startS3();
  cwd = await tempDir('kiln-canary-');
  await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': {}, '3.0.0': {}, '4.0.0': {} });
  ctl = await startController({ s3, keys });
  ({ agents } = await startFleet({ s3, keys, ctl, count: 3 }));
  await until('3 agents on 1.0.0', async () => Object.values(await installed()).filter((v) => v === '1.0.0').length === 3, 20_000);
}, 60_000);

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await ctl?.close();
  await s3?.close();
  await rm(cwd, { recursive: true, force: true });
});

describe('hotfix --canary', () => {
  it('installs the canary, pauses (kiln deploy exits 0 and says how to go on), and the rest follows only once promoted', async () => {
    const run = await cli('deploy', 'web', '2.0.0', '--canary', '1', '--batch', '1');
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toContain('no load balancer: swaps are not drained; canary 1');
    const id = /deployment (d-[a-z0-9]+-[0-9a-f]{6})/.exec(run.stdout)![1]!;
    expect(run.stdout).toContain(`paused after the canary\n  promote: kiln deployments promote ${id}\n  abort:   kiln deployments abort ${id}`);
    const paused = await deployment(id);
    expect(paused).toMatchObject({ state: 'paused', canary: 1, promoteRequested: false });
    expect(paused.batches.map((b: string[]) => b.length)).toEqual([1, 1, 1]);
    const canary = paused.batches[0][0];
    // Paused: it stays so; only the canary runs 2.0.0.
    await new Promise((r) => setTimeout(r, 600));
    expect((await deployment(id)).state).toBe('paused');
    expect(Object.values(await installed()).sort()).toEqual(['1.0.0', '1.0.0', '2.0.0']);
    expect((await installed())[canary]).toBe('2.0.0');
    // The fleet is held: another deployment is refused while the canary waits.
    expect((await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0' })).body.error.code).toBe('KILN_FLEET_BUSY');

    const promoted = await cli('deployments', 'promote', id);
    expect(promoted.code, promoted.stderr).toBe(0);
    expect(promoted.stdout).toContain(`promote requested: ${id} goes on`);
    const done = await deploymentOver(id, ctl);
    expect(done).toMatchObject({ state: 'succeeded', promoteRequested: true });
    expect(Object.values(await installed())).toEqual(['2.0.0', '2.0.0', '2.0.0']);
    // Over: promote and abort say so with KILN_NOT_PAUSED (409).
    const late = await ctl.api('POST', `/v1/deployments/${id}/promote`);
    expect([late.status, late.body.error.code]).toEqual([409, 'KILN_NOT_PAUSED']);
    expect((await cli('deployments', 'abort', id)).stderr).toMatch(/^error KILN_NOT_PAUSED: deployment .* is succeeded, not paused/m);
  }, 60_000);

  it('abort rolls the canary back to what the fleet ran and points the channel back: KILN_DEPLOY_ABORTED', async () => {
    const started = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', canary: 1, batch: { count: 1 } });
    expect(started.status, JSON.stringify(started.body)).toBe(201);
    const id = started.body.deployment.id;
    await until('paused', async () => (await deployment(id)).state === 'paused', 20_000);
    expect(Object.values(await installed()).filter((v) => v === '3.0.0')).toHaveLength(1);
    const aborted = await cli('deployments', 'abort', id);
    expect(aborted.code, aborted.stderr).toBe(0);
    const done = await deploymentOver(id, ctl);
    expect(done.state).toBe('failed');
    expect(done.error.code).toBe('KILN_DEPLOY_ABORTED');
    expect(done.verdict).toContain('touched instances rolled back to 2.0.0');
    expect(Object.values(await installed())).toEqual(['2.0.0', '2.0.0', '2.0.0']);
    expect((await findPointer(s3.store, 'web', 'stable', keys.keys))?.version).toBe('2.0.0');
    const show = await cli('deployments', 'show', id);
    expect(show.stdout).toMatch(/failed: the canary \(web-\d\) was aborted by an operator; touched instances rolled back to 2\.0\.0\n.*\nweb-\d +1 +rolled-back/);
  }, 60_000);

  it('--canary-wait promotes by itself once the wait is over, and kiln deploy follows it to the end', async () => {
    const run = await cli('deploy', 'web', '4.0.0', '--canary', '2', '--canary-wait', '1s', '--batch', '100%');
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toContain('paused after the canary; it is promoted by itself 1 s after pausing');
    expect(run.stdout).toMatch(/succeeded: 3 healthy on 4\.0\.0/);
    expect(Object.values(await installed())).toEqual(['4.0.0', '4.0.0', '4.0.0']);
  }, 60_000);
});

describe('gates refused before anything moves', () => {
  it('a canary as big as the fleet, --canary-wait without --canary, an error rate without a soak or without a balancer', async () => {
    const whole = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', canary: 3 });
    expect(whole.body.error).toMatchObject({ code: 'KILN_REQUEST_INVALID', message: expect.stringContaining('a canary of 3 is not smaller than the 3 instance(s) connected in fleet web') });
    const noSoak = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', maxErrorRate: 0.1 });
    expect(noSoak.body.error.message).toContain('soakMs: maxErrorRate and alarms are read over the soak window');
    const noBalancer = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', maxErrorRate: 0.1, soakMs: 1000 });
    expect(noBalancer.body.error.message).toContain("maxErrorRate reads the balancer's 5xx counters per target: fleet web has no load balancer");
    const alarms = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', alarms: ['web-5xx'], soakMs: 1000 });
    expect(alarms.body.error.message).toContain('this controller has no AWS region to read them in');
    for (const [args, text] of [
      [['--canary-wait', '1m'], '--canary-wait needs --canary N'],
      [['--max-error-rate', '5%'], '--max-error-rate is judged over the soak window: give --soak DURATION too'],
      [['--soak', '10s', '--max-error-rate', '150%'], '--max-error-rate 150%: a share from 0 to 1'],
      [['--canary', '0'], '--canary 0: a number of instances from 1'],
      [['--soak', 'soon'], '--soak soon: a duration like 30s'],
    ] as const) {
      const r = await cli('deploy', 'web', '1.0.0', ...args);
      expect([r.code, r.stderr]).toEqual([2, expect.stringContaining(text)]);
    }
    // Nothing moved: no deployment of 1.0.0 was made.
    expect((await ctl.api('GET', '/v1/deployments?fleet=web')).body.deployments.some((d: any) => d.release.version === '1.0.0')).toBe(false);
  }, 60_000);
});

describe('a paused canary must keep serving', () => {
  it('its agent gone while paused: the pause ends with KILN_SOAK_FAILED, no promote needed, and the rest is never touched', async () => {
    const started = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', canary: 1, batch: { count: 1 }, healthTimeoutMs: 2_000 });
    expect(started.status, JSON.stringify(started.body)).toBe(201);
    const id = started.body.deployment.id;
    await until('paused', async () => (await deployment(id)).state === 'paused', 20_000);
    const [canary] = (await deployment(id)).batches[0];
    await agents.find((a) => a.instanceId === canary)!.stop();
    const done = await deploymentOver(id, ctl, 30_000);
    expect(done.state).toBe('failed');
    expect(done.error.code).toBe('KILN_SOAK_FAILED');
    expect(done.error.message).toContain(`the canary stopped serving while paused: ${canary} lost its agent's connection`);
    expect(done.promoteRequested).toBe(false);
    // The others stayed where they were, and the channel points back.
    expect(Object.entries(done.instances).filter(([i]) => i !== canary).map(([, i]: [string, any]) => i.step)).toEqual(['pending', 'pending']);
    expect((await findPointer(s3.store, 'web', 'stable', keys.keys))?.version).toBe('4.0.0');
  }, 60_000);
});
