// How long a deployment took, as `kiln deploy` says it (issue 16, item 6): a bake's own phases
// (bake:launch, bake:install, …) lie inside its bake phase, and the verdict summed both, so a bake
// deployment claimed about its bake's time more than it took (`in 10.4 s` for 8.3 s of wall time).
// Real controller with the process provider, real agents and apps; the CLI through runCli.
import { rm } from 'node:fs/promises';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kilnHere } from '../helpers/cli.js';
import { OPERATOR, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { makeKeys, pushReleases, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let dir: string;

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-durations-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({ s3, keys, launch: testLaunch(provider, s3) });
  await pushReleases({ store: s3.store, keys }, ['1.0.0']);
}, 60_000);

afterAll(async () => {
  await ctl?.close();
  await provider?.terminate((await provider.describeInstances({})).map((i) => i.id));
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
}, 60_000);

const kiln = (...argv: string[]) => kilnHere(argv, { cwd: dir, env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR } });

describe('deployment durations', () => {
  it('a bake deployment says its wall time, not its phases summed with the bake\'s own phases counted twice', async () => {
    expect((await kiln('fleet', 'create', 'web', '--app', 'web', '--provider', 'process', '--size', '1')).code).toBe(0);
    const began = Date.now();
    const r = await kiln('deploy', 'web', '1.0.0', '--strategy', 'bake', '--health-timeout', '30s');
    const wallMs = Date.now() - began;
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const claimed = Number(/is live with 1\.0\.0 in ([\d.]+) s/.exec(r.stdout)?.[1]);
    const phase = (name: string) => Number(new RegExp(`^  ${name.replace(/[()]/g, '\\$&')}\\s+([\\d.]+) s$`, 'm').exec(r.stdout)?.[1]);
    const bake = phase('bake (total)');
    const own = ['prepare', 'launch', 'install', 'image', 'reap'].map((p) => phase(`bake:${p}`));
    // the bake line says it is the total of the bake's own lines, which it holds
    expect(bake, r.stdout).toBeGreaterThan(0);
    expect(own.every((ms) => ms >= 0), r.stdout).toBe(true);
    expect(own.reduce((a, b) => a + b, 0)).toBeCloseTo(bake, 0);
    // what the CLI measured around the whole command holds the deployment: its claim cannot be more
    expect(claimed * 1000, r.stdout).toBeLessThanOrEqual(wallMs + 100);
    // and the record agrees: from its creation to its end
    const id = /deployment (d-\S+):/.exec(r.stdout)![1]!;
    const rec = (await ctl.api('GET', `/v1/deployments/${id}`)).body.deployment;
    expect(Math.abs(claimed * 1000 - (Date.parse(rec.finishedAt) - Date.parse(rec.createdAt)))).toBeLessThan(200);
  }, 90_000);
});
