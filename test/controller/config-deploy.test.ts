// A config change is a deployment: `kiln deploy FLEET --config` takes the fleet's latest config
// version with its desired release through the rollout (batches, health gate, rollback); a config the
// app fails with is rolled back to the old one on every instance; instances launched later boot with
// the config the channel pointer binds to the release. A secret, set by reference to a file on each
// host, reaches the apps and nothing else. Real controller, real S3, real agent and app processes.
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { readPointer } from '@kiln/shared';
import { until } from '../helpers/agent.js';
import { operatorSession } from '../helpers/cli.js';
import { appEnv, pushConfigApp } from '../helpers/config-app.js';
import { closeProcessStack, deploymentOver, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { keptLog, makeKeys, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { bucketFiles, startS3, type S3Fixture } from '../helpers/s3.js';

/** The secret's value: in a file on each host, nowhere else. */
const DB_PASSWORD = 'pw-5e9c1a-on-each-host-only';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let dir: string;
let cwd: string;
const log = keptLog();
const { kiln, api, seen } = operatorSession(() => ctl, () => cwd);

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-config-deploy-');
  cwd = await tempDir('kiln-config-deploy-cwd-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({ s3, keys, log: log.log, launch: testLaunch(provider, s3) });
  await pushConfigApp({ store: s3.store, keys, version: '1.0.0' });
  expect((await api('POST', '/v1/fleets', { name: 'web', app: 'web', provider: 'process', size: 3 })).status).toBe(201);
  // Every instance is a copy of the base image: the secret's file is on each host, readable by its owner only.
  const secret = path.join(dir, 'images/img-base/root/etc/web/db-password');
  await mkdir(path.dirname(secret), { recursive: true });
  await writeFile(secret, `${DB_PASSWORD}\n`);
  await chmod(secret, 0o600);
  const launched = await api('POST', '/v1/deployments', { fleet: 'web', version: '1.0.0', strategy: 'relaunch', healthTimeoutMs: 20_000 });
  expect((await deploymentOver(launched.body.deployment.id, ctl)).state).toBe('succeeded');
}, 60_000);

afterAll(() => closeProcessStack({ ctl, provider, s3, dir }), 60_000);

/** The live group's instances, in the order a hotfix batches them (by id), with the environment each app runs with. */
async function liveApps(): Promise<Array<{ id: string; port: string; env: Record<string, string> | undefined }>> {
  const ids = (await api('GET', '/v1/fleets/web')).body.fleet.groups.find((g: any) => g.state === 'live').instances as string[];
  const insts = await provider.describeInstances({ 'kiln:fleet': 'web' });
  return Promise.all(
    [...ids].sort().map(async (id) => {
      const address = insts.find((i) => i.id === id)!.address!;
      return { id, port: new URL(address).port, env: await appEnv(address) };
    }),
  );
}

const rows = async () => (await api('GET', '/v1/fleets/web/instances')).body.instances as any[];

describe('kiln deploy FLEET --config', { timeout: 60_000 }, () => {
  it('is refused with what to do: no config yet, no desired release, neither a release nor --config', async () => {
    const none = await kiln('deploy', 'web', '--config');
    expect([none.code, none.stderr.split('\n')[0]]).toEqual([1, 'error KILN_CONFIG_NOT_FOUND: fleet web has no config yet: `kiln config set web KEY=VALUE` publishes its first version']);
    expect((await api('POST', '/v1/fleets', { name: 'idle', app: 'web' })).status).toBe(201);
    const undeployed = await api('POST', '/v1/deployments', { fleet: 'idle', config: true });
    expect([undeployed.status, undeployed.body.error.code]).toEqual([409, 'KILN_NO_PREVIOUS']);
    const empty = await api('POST', '/v1/deployments', { fleet: 'web' });
    expect([empty.status, empty.body.error.message]).toEqual([400, expect.stringMatching(/^the deployment is invalid: version: name the release to deploy, or config: true/)]);
    const usage = await kiln('deploy', 'web');
    expect([usage.code, usage.stderr.split('\n')[0]]).toEqual([2, "error KILN_USAGE: deploy web needs the VERSION to deploy, or --config to deploy the fleet's latest config with the release it runs"]);
    expect((await api('GET', '/v1/deployments?fleet=web')).body.deployments).toHaveLength(1);
  });

  it('rolls the latest config out in batches with the desired release: every app gets the value and the secret from its host', async () => {
    const set = await kiln('config', 'set', 'web', 'GREETING=hello', '--secret', 'DB_PASSWORD=file:/etc/web/db-password');
    expect(set.code, set.stderr).toBe(0);
    const deploy = await kiln('deploy', 'web', '--config', '--batch', '1', '--health-timeout', '20s');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    expect(deploy.stdout).toMatch(/of fleet web to web 1\.0\.0 with config 1 \(batch 1, /);
    expect(deploy.stdout).toMatch(/succeeded: 3 healthy on 1\.0\.0 with config 1/);

    const [d] = (await api('GET', '/v1/deployments?fleet=web')).body.deployments.slice(-1);
    expect(d.batches.map((b: string[]) => b.length)).toEqual([1, 1, 1]);
    expect(d.release).toMatchObject({ version: '1.0.0', config: { fleet: 'web', seq: 1 } });
    expect(d.previous).toMatchObject({ version: '1.0.0', config: null });
    for (const app of await liveApps()) expect([app.id, app.env?.GREETING, app.env?.DB_PASSWORD]).toEqual([app.id, 'hello', DB_PASSWORD]);

    // The fleet wants the release with that config, the pointer binds them, each instance reports running it.
    const fleet = (await api('GET', '/v1/fleets/web')).body.fleet;
    expect(fleet.desired).toMatchObject({ version: '1.0.0', config: { fleet: 'web', seq: 1 } });
    expect((await readPointer(s3.store, 'web', 'web', keys.keys)).config).toEqual(fleet.desired.config);
    expect((await rows()).map((r) => [r.config, r.desiredConfig])).toEqual([[1, 1], [1, 1], [1, 1]]);
    const status = await kiln('status', 'web');
    expect(status.stdout).toMatch(/^INSTANCE +CONNECTED +IMAGE \(BAKED\) +DESIRED +INSTALLED +CONFIG +VIA/m);
    expect(status.stdout).toMatch(/desired 1\.0\.0 with config 1/);

    // Deployed again, the same release and config: it says so.
    const again = await kiln('deploy', 'web', '--config', '--health-timeout', '20s');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('1.0.0 with config 1 is what fleet web should run already');
    expect(again.stdout).toContain("(already the fleet's desired release and config)");
  });

  it('a config the app fails with stops the rollout and sends every instance back to the config it ran, the batches already done too', async () => {
    const apps = await liveApps();
    // The last batch's app refuses to start with it: the first two batches pass.
    await kiln('config', 'set', 'web', `CRASH_ON_PORT=${apps[2]!.port}`);
    const deploy = await kiln('deploy', 'web', '--config', '--batch', '1', '--health-timeout', '20s');
    expect(deploy.code).toBe(1);
    expect(deploy.stderr).toMatch(/^error KILN_DEPLOY_FAILED: /m);
    expect(deploy.stdout).toMatch(/touched instances rolled back to 1\.0\.0 with config 1/);
    // Batches 1 and 2 were done (healthy on config 2) when batch 3 failed; then all three went back.
    for (const app of apps.slice(0, 2)) expect(deploy.stdout).toContain(`  ${app.id} healthy`);
    expect(deploy.stdout).toMatch(new RegExp(`  ${apps[2]!.id} (failed|rolled back): KILN_APP_CRASHED`));

    const [d] = (await api('GET', '/v1/deployments?fleet=web')).body.deployments.slice(-1);
    expect(d).toMatchObject({ state: 'failed', release: { config: { seq: 2 } }, previous: { config: { seq: 1 } } });
    expect(Object.values(d.instances).map((i: any) => i.step)).toEqual(['rolled-back', 'rolled-back', 'rolled-back']);
    expect(d.instances[apps[2]!.id].error.code).toBe('KILN_APP_CRASHED');
    for (const app of await liveApps()) expect([app.id, app.env?.GREETING, app.env?.CRASH_ON_PORT]).toEqual([app.id, 'hello', undefined]);
    expect((await rows()).map((r) => [r.config, r.drift])).toEqual([[1, 'off-image'], [1, 'off-image'], [1, 'off-image']]);
    expect((await api('GET', '/v1/fleets/web')).body.fleet.desired.config.seq).toBe(1);
    expect((await readPointer(s3.store, 'web', 'web', keys.keys)).config?.seq).toBe(1);
  });

  it('instances launched later boot with the config the pointer binds to the release; drift counts a config that differs', async () => {
    expect((await kiln('config', 'unset', 'web', 'CRASH_ON_PORT')).code).toBe(0);
    // A deployment of a release carries the fleet's latest config: the new group boots with version 3.
    const relaunch = await kiln('deploy', 'web', '1.0.0', '--strategy', 'relaunch', '--health-timeout', '20s');
    expect(relaunch.code, relaunch.stdout + relaunch.stderr).toBe(0);
    expect(relaunch.stdout).toMatch(/group web-v002 is live with 1\.0\.0 with config 3/);
    for (const app of await liveApps()) expect([app.env?.GREETING, app.env?.DB_PASSWORD]).toEqual(['hello', DB_PASSWORD]);
    expect((await rows()).map((r) => [r.group, r.config, r.desiredConfig, r.via, r.drift])).toEqual(Array(3).fill(['web-v002', 3, 3, 'boot', 'in-sync']));

    // A config published but not deployed changes nothing that runs.
    await kiln('config', 'set', 'web', 'GREETING=hi');
    expect((await kiln('drift', 'web', '--exit-code')).code).toBe(0);
    // One instance that runs another config than the fleet's desired one is drifted.
    const [one] = await liveApps();
    const rolled = await api('POST', '/v1/deployments', { fleet: 'web', config: true, batch: { count: 1 }, canary: 1, healthTimeoutMs: 20_000 });
    expect(rolled.status, JSON.stringify(rolled.body)).toBe(201);
    await until('the canary paused', async () => (await api('GET', `/v1/deployments/${rolled.body.deployment.id}`)).body.deployment.state === 'paused');
    const drift = await kiln('drift', 'web');
    expect(drift.stdout).toMatch(new RegExp(`^${one!.id} +drifted +.* 1\\.0\\.0 +1\\.0\\.0 +4 \\(desired 3\\)`, 'm'));
    await api('POST', `/v1/deployments/${rolled.body.deployment.id}/abort`);
    expect((await deploymentOver(rolled.body.deployment.id, ctl)).error.code).toBe('KILN_DEPLOY_ABORTED');
    expect((await rows()).map((r) => r.config)).toEqual([3, 3, 3]);
  });

  it("the secret's value is nowhere but in the apps: not the bucket, the agents' reports, the controller's log, deployment records or config show", async () => {
    const shown = await kiln('config', 'show', 'web');
    expect(shown.stdout).toMatch(/^DB_PASSWORD +file:\/etc\/web\/db-password +secret$/m);
    await api('GET', '/v1/deployments?fleet=web');
    const reports = ctl.server.kiln.hub.instances('web').map((i) => JSON.stringify(i.report));
    expect(reports.length).toBeGreaterThan(0);
    expect(log.text()).toContain('deployment created');

    // On each host the value is in its file and in the app's 0600 environment file, and nowhere else
    // (agent log, report file, state, the kept config): every other file of the instance is read.
    const hostFiles: string[] = [];
    for (const id of await readdir(path.join(dir, 'instances'))) {
      const root = path.join(dir, 'instances', id, 'root');
      for (const e of await readdir(root, { withFileTypes: true, recursive: true })) {
        const file = path.join(e.parentPath, e.name);
        if (!e.isFile() || file === path.join(root, 'etc/web/db-password')) continue;
        const text = await readFile(file, 'latin1');
        if (!text.includes(DB_PASSWORD)) continue;
        hostFiles.push(path.relative(root, file));
        expect((await stat(file)).mode & 0o777, file).toBe(0o600);
      }
    }
    expect(hostFiles.length).toBeGreaterThan(0);
    expect(hostFiles.every((f) => /^run\/kiln\/apps\/web\/config-\d+\.env$/.test(f)), hostFiles.join(', ')).toBe(true);

    const bucket = await bucketFiles(s3);
    expect(bucket.some((f) => f.includes('file:/etc/web/db-password'))).toBe(true);
    expect(bucket.filter((f) => f.includes(DB_PASSWORD)).length, 'in the bucket').toBe(0);
    expect(seen.filter((s) => s.includes(DB_PASSWORD)).length, 'in an output or answer').toBe(0);
    expect(reports.filter((r) => r.includes(DB_PASSWORD)).length, "in an agent's report").toBe(0);
    expect(log.text().includes(DB_PASSWORD), "in the controller's log").toBe(false);
  });
});
