// Issue 16, item 1: a controller that comes back on another address, while the instances of its
// fleet's live group keep calling the old one. It used to answer untruly: `kiln status` "0 instances"
// for a group running 2, `kiln drift` "every instance of web is in sync", `kiln heal` "healed: 0
// instances replaced" and a hotfix "succeeded: 0 healthy", all exit 0; a rollback to the standby
// group failed with a bare KILN_GROUP_UNHEALTHY. Real controllers, real S3, real agent processes.
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { readPointer } from '@kiln/shared';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { kilnHere } from '../helpers/cli.js';
import { makeKeys, pushApp, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { until } from '../helpers/agent.js';

let s3: S3Fixture;
let keys: Keys;
let dir: string;
let cwd: string;
let before: TestController | undefined;
let ctl: TestController;
let provider: Provider;
let live: string[];
let standby: string[];

/** Launched agents: a quick reconnect and a channel poll every 2 s while no controller answers. */
const AGENT_SETTINGS = { heartbeatMs: 500, backoffCapMs: 500, pollIntervalMs: 2_000 };
const agentSecret = randomBytes(32);
const launchOptions = (p: Provider) => ({ provider: p, agentSecret, s3: s3.s3.location, agentSettings: AGENT_SETTINGS, launchTimeoutMs: 20_000 });

/** `kiln …` against the controller that runs now, as an operator would call it. */
const cli = (...args: string[]) => kilnHere(args, { cwd, env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR } });

async function deployed(c: TestController, id: string): Promise<any> {
  let rec: any;
  await until(`deployment ${id} over`, async () => (rec = (await c.api('GET', `/v1/deployments/${id}`)).body.deployment).state !== 'running', 60_000);
  return rec;
}

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-unreachable-');
  cwd = await tempDir('kiln-unreachable-cwd-');
  for (const v of ['1.0.0', '2.0.0', '3.0.0']) await pushApp({ store: s3.store, keys, version: v });
  // The first controller launches two groups: web-v001 (1.0.0, then stopped: the standby) and web-v002 (2.0.0, live).
  before = await startController({ s3, keys, launch: launchOptions(createProcessProvider({ dir, log: quietLog() })) });
  expect((await before.api('POST', '/v1/fleets', { name: 'web', app: 'web', channel: 'stable', provider: 'process', size: 2 })).status).toBe(201);
  for (const version of ['1.0.0', '2.0.0']) {
    const res = await before.api('POST', '/v1/deployments', { fleet: 'web', version, strategy: 'relaunch', healthTimeoutMs: 20_000 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const rec = await deployed(before, res.body.deployment.id);
    expect(rec.state, JSON.stringify(rec)).toBe('succeeded');
  }
  await before.close();
  before = undefined;
  // The next one on another port (kiln up restarted): every agent keeps calling the old address.
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({ s3, keys, launch: launchOptions(provider) });
  const fleet = (await ctl.api('GET', '/v1/fleets/web')).body.fleet;
  live = fleet.groups.find((g: any) => g.name === 'web-v002').instances.sort();
  standby = fleet.groups.find((g: any) => g.name === 'web-v001').instances.sort();
  expect([live.length, standby.length]).toEqual([2, 2]);
}, 120_000);

afterAll(async () => {
  await before?.close();
  await ctl?.close();
  const left = await provider?.describeInstances({});
  await provider?.terminate((left ?? []).map((i) => i.id));
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
  await rm(cwd, { recursive: true, force: true });
}, 60_000);

describe('a fleet whose agents call a controller that is gone', () => {
  it('kiln status shows the live group unreachable, not "0 instances" (and so does the API)', async () => {
    const body = (await ctl.api('GET', '/v1/fleets/web/instances')).body;
    expect(body.instances.map((r: any) => [r.instanceId, r.group, r.connected, r.lastSeen, r.drift])).toEqual(live.map((id) => [id, 'web-v002', false, null, 'unreachable']));
    expect(body.summary).toMatchObject({ instances: 2, inSync: 0, unreachable: 2 });

    const status = await cli('status', 'web');
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toContain('2 instances: 0 in sync, 0 off their image (hotfixed), 0 drifted, 2 unreachable');
    expect(status.stdout).not.toMatch(/^0 instances/m);
    for (const id of live) expect(status.stdout).toMatch(new RegExp(`^${id}\\s+never\\s`, 'm'));
    expect(status.stdout).toContain(`2 unreachable: ${live.join(', ')}: no agent of theirs reports to this controller`);
  });

  it('kiln drift counts them as not in sync instead of "every instance of web is in sync"', async () => {
    const body = (await ctl.api('GET', '/v1/fleets/web/drift')).body;
    expect(body.drifted.map((r: any) => [r.instanceId, r.drift])).toEqual(live.map((id) => [id, 'unreachable']));

    const drift = await cli('drift', 'web');
    expect(drift.stdout).not.toContain('in sync\n');
    expect(drift.stdout).not.toContain('every instance of web is in sync');
    for (const id of live) expect(drift.stdout).toMatch(new RegExp(`^${id}\\s+unreachable\\s`, 'm'));
  });

  it('kiln heal fails with KILN_AGENT_UNREACHABLE naming them, not "healed: 0 instances replaced" with exit 0', async () => {
    const heal = await cli('heal', 'web', '--health-timeout', '5s');
    expect(heal.code, heal.stdout + heal.stderr).toBe(1);
    expect(heal.stdout).not.toContain('healed: 0 instances replaced');
    expect(heal.stdout).toContain(`not healed: 2 instance(s) unreachable (no agent reports to this controller): ${live.join(', ')}`);
    expect(heal.stderr).toMatch(/^error KILN_AGENT_UNREACHABLE: 2 instance\(s\) were unreachable and not healed/m);
  });

  it('a hotfix that reaches 0 of 2 instances fails with KILN_AGENT_UNREACHABLE, and the pointer does not move', async () => {
    const pointer = await readPointer(s3.store, 'web', 'stable', keys.keys);
    const deploy = await cli('deploy', 'web', '3.0.0', '--health-timeout', '5s');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(1);
    expect(deploy.stderr).toMatch(/^error KILN_AGENT_UNREACHABLE: reached 0 of 2 instances of fleet web/m);
    for (const id of live) expect(deploy.stderr).toContain(id);
    expect(deploy.stdout).not.toContain('succeeded');
    expect(await readPointer(s3.store, 'web', 'stable', keys.keys)).toEqual(pointer);
    expect((await ctl.api('GET', '/v1/fleets/web')).body.fleet.desired.version).toBe('2.0.0');
  });

  it('a rollback to the standby group whose agents never connect says so with their ids, not a bare KILN_GROUP_UNHEALTHY', async () => {
    const rollback = await cli('rollback', 'web', '--health-timeout', '4s');
    expect(rollback.code, rollback.stdout + rollback.stderr).toBe(1);
    expect(rollback.stderr).toMatch(/^error KILN_AGENT_UNREACHABLE: reached 0 of 2 instances brought back of web-v001: no agent connected to this controller/m);
    for (const id of standby) {
      expect(rollback.stderr).toContain(id);
      expect(rollback.stdout).toContain(`${id} failed: KILN_AGENT_TIMEOUT ${id} never connected to this controller since it was started`);
    }
    // The live group stays live, on the release the channel points to again.
    const fleet = (await ctl.api('GET', '/v1/fleets/web')).body.fleet;
    expect(fleet.groups.map((g: any) => [g.name, g.state])).toEqual([['web-v001', 'standby'], ['web-v002', 'live']]);
    expect((await readPointer(s3.store, 'web', 'stable', keys.keys)).version).toBe('2.0.0');
    expect((await provider.describeInstances({ 'kiln:group': 'web-v001' })).every((i) => i.state === 'stopped')).toBe(true);
  }, 60_000);
});
