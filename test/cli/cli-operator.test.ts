// What the CLI answers an operator (issue 16, items 5, 8, 9, 11): the real `kiln` program as a child
// process against a real controller (buildServer on loopback), real S3 and real agents. Ctrl-C while
// following a deployment, drift for scripts, rollback to a named release, errors that name the next step.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createLogger, readPointer, type ReleaseRef } from '@kiln/shared';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { until, type TestAgent } from '../helpers/agent.js';
import { finished, kiln, outputHolds, startKiln, type CliResult } from '../helpers/cli.js';
import { OPERATOR, startController, startFleet, type TestController } from '../helpers/controller.js';
import { DEMO_APP, freePort, gatedSpec, makeKeys, pushReleases, tempDir, unhealthySpec, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let agents: TestAgent[];
let rel: Record<string, ReleaseRef>;
/** 2.0.0 passes its health check only once this file exists: a deployment held as long as a test wants */
let gate: string;
/** a working directory with no .kiln: everything comes from the environment, as on an operator's laptop */
let cwd: string;
let env: Record<string, string>;

const k = (...args: string[]) => kiln(args, { cwd, env });
const start = (...args: string[]) => startKiln(args, { cwd, env });
const deployment = async (id: string) => (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  cwd = await tempDir('kiln-operator-');
  gate = path.join(cwd, 'gate');
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': { kilnJson: gatedSpec(gate, 60_000) }, '3.0.0': {}, '5.0.0': { app: 'sick', kilnJson: unhealthySpec(300) } });
  ctl = await startController({ s3, keys, log: createLogger({ level: 'silent' }) });
  ({ agents } = await startFleet({ s3, keys, ctl, count: 2 }));
  await until('2 agents on 1.0.0', async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances.filter((r: any) => r.connected && r.installed === '1.0.0').length === 2);
  await writeFile(path.join(cwd, 'release.pub'), keys.publicPem);
  const loc = s3.s3.location;
  env = {
    KILN_CONTROLLER: ctl.url,
    KILN_TOKEN: OPERATOR,
    KILN_BUCKET: loc.bucket,
    KILN_S3_ENDPOINT: loc.endpoint!,
    AWS_ACCESS_KEY_ID: loc.accessKeyId!,
    AWS_SECRET_ACCESS_KEY: loc.secretAccessKey!,
    AWS_REGION: loc.region ?? 'us-east-1',
  };
}, 60_000);

afterAll(async () => {
  await writeFile(gate, '').catch(() => undefined);
  await Promise.all((agents ?? []).map((a) => a.stop()));
  await ctl?.close();
  await s3?.close();
});

/** Sends Ctrl-C to a `kiln` that follows a deployment, once it has shown `text`. */
async function interrupt(child: ChildProcess, text: string): Promise<CliResult> {
  const done = finished(child);
  await outputHolds(child, text);
  child.kill('SIGINT');
  return done;
}

describe('kiln drift --exit-code', () => {
  it('exits 0 when every instance is in sync (drift had no exit code for scripts: 0 with instances off their image)', async () => {
    const r = await k('drift', 'web', '--exit-code');
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toContain('every instance of web is in sync');
  });
});

describe('Ctrl-C while a deployment is followed', () => {
  let id: string;

  it('kiln deploy: says the deployment keeps running, how to follow and cancel it, and exits 130 (was: silent exit, deployment going on)', async () => {
    const child = start('deploy', 'web', '2.0.0', '--batch', '100%', '--health-timeout', '60s');
    const r = await interrupt(child, 'batch 1/1:');
    id = /deployment (d-[a-z0-9]+-[0-9a-f]{6}):/.exec(r.stdout)![1]!;
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toContain(`deployment ${id} keeps running`);
    expect(r.stderr).toContain(`kiln deployments show ${id} --follow`);
    expect(r.stderr).toContain(`kiln deployments cancel ${id}`);
    expect((await deployment(id)).state).toBe('running');
  });

  it('kiln deployments show --follow says the same on Ctrl-C', async () => {
    const r = await interrupt(start('deployments', 'show', id, '--follow'), `deployment ${id}:`);
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toContain(`kiln deployments cancel ${id}`);
    expect((await deployment(id)).state).toBe('running');
  });

  it('KILN_FLEET_BUSY names the running deployment and the command that cancels it (was: "wait for it or cancel it")', async () => {
    const r = await k('deploy', 'web', '3.0.0');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error KILN_FLEET_BUSY: /);
    expect(r.stderr).toContain(`kiln deployments cancel ${id}`);
    expect(r.stderr).toContain(`kiln deployments show ${id} --follow`);
  });

  it('the deployment went on without the CLI, and ends as it would have', async () => {
    await writeFile(gate, '');
    const r = await k('deployments', 'show', id, '--follow');
    expect(r.code, r.stderr).toBe(0);
    expect((await deployment(id)).state).toBe('succeeded');
  });

  it('kiln drift --exit-code exits 1 once instances are off their image (hotfixed), 0 without the flag', async () => {
    const flagged = await k('drift', 'web', '--exit-code');
    expect(flagged.code).toBe(1);
    expect(flagged.stdout).toMatch(/web-1\s+off-image/);
    expect((await k('drift', 'web')).code).toBe(0);
    const json = await k('drift', 'web', '--exit-code', '--json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout).drifted).toHaveLength(2);
  });
});

describe('kiln rollback FLEET --to VERSION', () => {
  it('rolls back to the named older release with a new pointer (there was no --to: only the previous release)', async () => {
    const before = await readPointer(s3.store, 'web', 'stable', keys.keys);
    const r = await k('rollback', 'web', '--to', '1.0.0', '--json');
    expect(r.code, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout);
    expect(d).toMatchObject({ kind: 'rollback', strategy: 'hotfix', release: { version: '1.0.0', manifestSha256: rel['1.0.0']!.manifestSha256 }, state: 'succeeded' });
    const after = await readPointer(s3.store, 'web', 'stable', keys.keys);
    expect([after.version, after.seq > before.seq]).toEqual(['1.0.0', true]);
    const rows = (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances;
    expect(rows.map((x: any) => x.installed)).toEqual(['1.0.0', '1.0.0']);
  });

  it('refuses a release that is not older, and one that does not exist, with the next step', async () => {
    const newer = await k('rollback', 'web', '--to', '3.0.0');
    expect(newer.code).toBe(1);
    expect(newer.stderr).toMatch(/^error KILN_REQUEST_INVALID: web 3\.0\.0 is not older than 1\.0\.0.*kiln deploy web 3\.0\.0/);
    const none = await k('rollback', 'web', '--to', '9.9.9');
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^error KILN_RELEASE_NOT_FOUND: no release web 9\.9\.9: `kiln release list web`/);
  });

  it('the deployments table has a STRATEGY column, and deployments show prints the strategy (neither said how)', async () => {
    const table = await k('deployments', 'web');
    expect(table.code, table.stderr).toBe(0);
    const [head, ...rows] = table.stdout.trim().split('\n');
    expect(head).toMatch(/^ID\s+FLEET\s+KIND\s+STRATEGY\s+RELEASE\s+STATE/);
    expect(rows.map((l) => l.split(/\s+/).slice(2, 5))).toEqual([
      ['deploy', 'hotfix', '2.0.0'],
      ['rollback', 'hotfix', '1.0.0'],
    ]);
    const id = rows[1]!.split(/\s+/)[0]!;
    const show = await k('deployments', 'show', id);
    expect(show.stdout).toMatch(/\nstrategy hotfix\n/);
  });
});

describe('errors that say the next step', () => {
  it('a wrong token: the controller does not know it, and where the right one is (was: "an operator credential is required")', async () => {
    const r = await k('status', 'web', '--token', 'not-the-token-0123456789');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error KILN_UNAUTHORIZED: the controller at http:\/\/127\.0\.0\.1:\d+ does not know the operator token from --token: .*\.kiln\/controller\.json.*KILN_TOKEN/);
    const fromEnv = await kiln(['status', 'web'], { cwd, env: { ...env, KILN_TOKEN: 'not-the-token-0123456789' } });
    expect(fromEnv.stderr).toContain('does not know the operator token from KILN_TOKEN');
  });

  it('an unknown version suggests kiln release list APP; a channel with no pointer, kiln release promote', async () => {
    const deploy = await k('deploy', 'web', '9.9.9');
    expect(deploy.stderr).toMatch(/^error KILN_RELEASE_NOT_FOUND: no release web 9\.9\.9: `kiln release list web` lists the published ones/);
    const show = await k('release', 'show', 'web', '9.9.9', '--trust', 'release.pub');
    expect(show.stderr).toMatch(/^error KILN_RELEASE_NOT_FOUND: no release web 9\.9\.9: `kiln release list web`/);
    const channel = await k('release', 'channel', 'web', 'beta', '--trust', 'release.pub');
    expect(channel.code).toBe(1);
    expect(channel.stderr).toMatch(/^error KILN_RELEASE_NOT_FOUND: channel beta of web points to no release yet: point it at one with `kiln release promote web VERSION --channel beta`/);
  });

  it('no signing key suggests kiln keys generate', async () => {
    const r = await k('release', 'push', DEMO_APP, '--app', 'web', '--version', '4.0.0');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error KILN_KEY_INVALID: no release signing key at .*release\.key: make one with `kiln keys generate`/);
  });

  it('an unknown deployment suggests kiln deployments; instances of a fleet that does not exist is KILN_FLEET_NOT_FOUND (was an empty list)', async () => {
    const d = await k('deployments', 'show', 'd-abc123-0a1b2c');
    expect(d.stderr).toMatch(/^error KILN_DEPLOYMENT_NOT_FOUND: no deployment d-abc123-0a1b2c: `kiln deployments FLEET` lists/);
    const i = await k('instances', '--fleet', 'nofleet');
    expect(i.code).toBe(1);
    expect(i.stderr).toMatch(/^error KILN_FLEET_NOT_FOUND: /);
  });

  it('a failed install ends with its coded line and no stack trace before it (the install routine logged one)', async () => {
    const root = path.join(cwd, 'host');
    const r = await k('host', 'install', 'sick', '--version', '5.0.0', '--root', root, '--port', String(await freePort()), '--trust', 'release.pub');
    await k('host', 'stop', 'sick', '--root', root);
    expect(r.code).toBe(1);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines.at(-1)).toMatch(/^error KILN_HEALTH_FAILED: /);
    // a stack frame, raw or inside a JSON log line
    expect(r.stderr).not.toMatch(/\bat .*\(?(file:\/\/|node:|\/).*:\d+:\d+\)?/);
    // what the routine logs reads as a line, with the error's code
    expect(r.stderr).toMatch(/^kiln error: install failed: KILN_HEALTH_FAILED: /m);
  });

  it('kiln status whose reader went away (| head) ends quietly: no EPIPE stack trace', async () => {
    const child = start('status', 'web');
    // the read end closes before kiln writes: every write it makes meets EPIPE
    child.stdout!.destroy();
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect([code, stderr]).toEqual([0, '']);
  });
});
