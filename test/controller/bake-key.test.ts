// Issue 16, item 2: the bake key was (base image, artifact sha256, agent version), so two releases of
// one app tree shared an image: `kiln bake shop 3.0.0` answered with the 1.0.0 image, and heal and
// relaunch then booted the wrong release. The key covers the manifest's digest now. Real controller,
// real S3, the process provider's real builders, `kiln bake` as an operator runs it.
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { contentSha256, publishRelease } from '@kiln/shared';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { kilnHere } from '../helpers/cli.js';
import { makeApp, makeKeys, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: TestController;
let provider: Provider;
let dir: string;
let cwd: string;
const keys = makeKeys();
const artifacts: string[] = [];

const cli = (...args: string[]) => kilnHere(args, { cwd, env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR } });

async function bake(version: string): Promise<{ id: string; skipped: boolean; tags: Record<string, string> }> {
  const r = await cli('bake', 'shop', version, '--from', 'img-base', '--json');
  expect(r.code, r.stdout + r.stderr).toBe(0);
  const record = JSON.parse(r.stdout);
  const [image] = await provider.describeImages({ ids: [record.image] });
  return { id: record.image, skipped: record.skipped, tags: image!.tags };
}

beforeAll(async () => {
  s3 = await startS3();
  dir = await tempDir('kiln-bake-key-');
  cwd = await tempDir('kiln-bake-key-cwd-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({
    s3,
    keys,
    launch: { provider, agentSecret: randomBytes(32), s3: s3.s3.location, agentSettings: { heartbeatMs: 500, backoffCapMs: 500 }, bakeTimeouts: { launchMs: 20_000, installMs: 30_000, imageMs: 30_000 } },
  });
  await provider.defaultImage!();
  // One app tree, published as two versions: the same artifact, two manifests.
  const tree = await makeApp('same tree');
  for (const version of ['1.0.0', '3.0.0']) artifacts.push(contentSha256((await publishRelease({ store: s3.store, app: 'shop', version, source: tree, key: keys.key, log: quietLog() })).manifest));
  await rm(tree, { recursive: true, force: true });
}, 60_000);

afterAll(async () => {
  await ctl?.close();
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
  await rm(cwd, { recursive: true, force: true });
}, 60_000);

describe('the bake key', () => {
  it('two versions of the same tree bake two images, each marked with its own release; the same version again reuses its image', async () => {
    expect(artifacts[0]).toBe(artifacts[1]);
    const first = await bake('1.0.0');
    const second = await bake('3.0.0');
    expect(second.skipped).toBe(false);
    expect(second.id).not.toBe(first.id);
    expect([first.tags['kiln:version'], second.tags['kiln:version']]).toEqual(['1.0.0', '3.0.0']);
    expect(second.tags['kiln:bake-key']).not.toBe(first.tags['kiln:bake-key']);

    const again = await cli('bake', 'shop', '3.0.0', '--from', 'img-base');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`image ${second.id} (baked before with the same bake key: reused)`);
    expect((await provider.describeImages({ tags: { 'kiln:app': 'shop' } })).length).toBe(2);
  }, 90_000);
});
