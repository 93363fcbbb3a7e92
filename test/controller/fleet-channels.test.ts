// Issue 16, items 3 and 7: a fleet and the channel it follows, through `kiln fleet create` and
// `kiln deploy` against a real controller on real S3. Two fleets on one app and channel used to share
// one pointer silently (deploying one moved the other's future instances); a new fleet took the
// pointer's seq for its desired release, so its first forward deploy went out as a rollback.
import { rm } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { findPointer, promoteRelease } from '@kiln/shared';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { kilnHere } from '../helpers/cli.js';
import { makeAgent, until, type TestAgent } from '../helpers/agent.js';
import { makeKeys, pushApp, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: TestController;
let cwd: string;
const keys = makeKeys();
const agents: TestAgent[] = [];

const cli = (...args: string[]) => kilnHere(args, { cwd, env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR } });
const promote = (app: string, version: string, channel: string) => promoteRelease({ store: s3.store, app, version, channel, key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });

beforeAll(async () => {
  s3 = await startS3();
  cwd = await tempDir('kiln-channels-');
  for (const version of ['1.0.0', '2.0.0']) await pushApp({ store: s3.store, keys, version });
  await pushApp({ store: s3.store, keys, app: 'shop', version: '1.0.0' });
  ctl = await startController({ s3, keys });
});
afterAll(async () => {
  await ctl?.close();
  await s3?.close();
  await rm(cwd, { recursive: true, force: true });
});
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()));
});

describe('kiln fleet create: one channel per fleet', () => {
  it("a fleet follows a channel of its own by default (its name), so deploying one fleet leaves another's pointer alone", async () => {
    const front = await cli('fleet', 'create', 'front', '--app', 'shop', '--json');
    const back = await cli('fleet', 'create', 'back', '--app', 'shop', '--json');
    expect([front.code, back.code], front.stderr + back.stderr).toEqual([0, 0]);
    expect([JSON.parse(front.stdout).fleet.channel, JSON.parse(back.stdout).fleet.channel]).toEqual(['front', 'back']);
    // No instances yet: the deployment only points front's channel at 1.0.0 (what front's instances will boot into).
    const deploy = await cli('deploy', 'front', '1.0.0');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    expect((await findPointer(s3.store, 'shop', 'front', keys.keys))?.version).toBe('1.0.0');
    expect(await findPointer(s3.store, 'shop', 'back', keys.keys)).toBeUndefined();
  });

  it('refuses a second fleet on the same app and channel with KILN_CHANNEL_TAKEN and the --channel to pass', async () => {
    expect((await cli('fleet', 'create', 'blue', '--app', 'shop', '--channel', 'prod')).code).toBe(0);
    const green = await cli('fleet', 'create', 'green', '--app', 'shop', '--channel', 'prod');
    expect(green.code).toBe(1);
    expect(green.stderr).toMatch(/^error KILN_CHANNEL_TAKEN: fleet blue already follows channel prod of shop: .*--channel green/m);
    // The API answers the same, as a 409, and nothing was created.
    const api = await ctl.api('POST', '/v1/fleets', { name: 'green', app: 'shop', channel: 'prod' });
    expect([api.status, api.body.error.code]).toEqual([409, 'KILN_CHANNEL_TAKEN']);
    expect((await ctl.api('GET', '/v1/fleets/green')).status).toBe(404);
    // Its own channel, as the message says: created. Another app on the same channel name shares nothing.
    expect((await cli('fleet', 'create', 'green', '--app', 'shop', '--channel', 'green')).code).toBe(0);
    expect((await cli('fleet', 'create', 'prod-web', '--app', 'web', '--channel', 'prod')).code).toBe(0);
  });
});

describe('a new fleet on a channel promoted more often than releases were published', () => {
  it("wants the release's seq, not the pointer's: its first deploy of a newer version goes out forward (VIA hotfix, not rollback)", async () => {
    // 1.0.0 is release seq 1 and 2.0.0 seq 2; the channel's pointer to 1.0.0 is its third promote (seq 3).
    for (const v of ['1.0.0', '2.0.0', '1.0.0']) await promote('web', v, 'stable');
    const created = await cli('fleet', 'create', 'web', '--app', 'web', '--channel', 'stable', '--json');
    expect(created.code, created.stderr).toBe(0);
    const { fleet, agentCredential } = JSON.parse(created.stdout);
    expect(fleet.desired).toMatchObject({ version: '1.0.0', seq: 1 });

    const agent = await makeAgent({ s3, keys, instanceId: 'web-1', config: { channel: 'stable', controller: { url: ctl.agentsUrl, credential: agentCredential } } });
    agents.push(agent);
    await agent.agent.start();
    await until('web-1 on 1.0.0', async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances.some((r: any) => r.connected && r.installed === '1.0.0' && r.operation === null));

    const deploy = await cli('deploy', 'web', '2.0.0', '--health-timeout', '20s');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    const status = await cli('status', 'web', '--json');
    expect(JSON.parse(status.stdout).instances.map((r: any) => [r.instanceId, r.installed, r.via])).toEqual([['web-1', '2.0.0', 'hotfix']]);
    expect(await agent.serving()).toContain('kiln-demo 2.0.0');
  }, 60_000);
});
