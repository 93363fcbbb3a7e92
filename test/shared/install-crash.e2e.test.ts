// SIGKILL of the installing process (the real CLI) at every step of the routine: start-up
// recovery must leave `current` on a complete old or new release, with nothing left behind.
// The releases are format 2 (pushApp's default): the kill lands while contents are fetched and copied.
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, swapSymlink } from '@kiln/shared';
import { kiln, startKiln } from '../helpers/cli.js';
import { makeHost, type Host } from '../helpers/host.js';
import { incompressible, leftovers, makeKeys, pushApp, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let pubFile: string;
const keys = makeKeys();
const hosts: Host[] = [];

beforeAll(async () => {
  s3 = await startS3();
  const dir = await tempDir();
  pubFile = path.join(dir, 'release.pub');
  await writeFile(pubFile, keys.publicPem);
  await pushApp({ store: s3.store, keys, version: '1.0.0' });
  // Big enough (16 MiB, incompressible) that a kill lands while the download is under way.
  await pushApp({ store: s3.store, keys, version: '2.0.0', extra: incompressible(16) });
}, 60_000);
afterAll(() => s3.close());
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

function cliArgs(h: Host, version: string): string[] {
  return ['host', 'install', 'web', '--version', version, '--root', h.root, '--port', String(h.port), '--bucket', 'kiln', '--s3-endpoint', s3.s3.location.endpoint!, '--trust', pubFile];
}
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };

/** Runs the CLI install until stderr shows `marker`, then SIGKILLs it. */
async function killAt(h: Host, marker: RegExp, pauseAt?: string, delayMs = 0): Promise<void> {
  const child = startKiln(cliArgs(h, '2.0.0'), { env: { ...env, ...(pauseAt ? { KILN_TEST_PAUSE_AT: pauseAt } : {}) } });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d) => {
      stderr += d;
      if (marker.test(stderr)) resolve();
    });
    child.on('exit', (code) => reject(new Error(`kiln exited (${code}) before ${marker}: ${stderr}`)));
  });
  if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
  child.kill('SIGKILL');
  await new Promise((r) => child.on('close', r));
}

async function expectConsistent(h: Host): Promise<string> {
  const layout = appLayout(h.root, 'web');
  const current = await h.current();
  expect(current === '1.0.0' || current === '2.0.0').toBe(true);
  // complete: the marker and the whole tree are there
  await stat(layout.metaFile(current!));
  expect((await readFile(path.join(layout.release(current!), 'VERSION'), 'utf8')).trim()).toBe(current);
  const state = await h.state();
  expect(state.current?.version).toBe(current);
  expect(await leftovers(h.root)).toEqual([]);
  // recovery restarts the release it leaves current; give the app a moment to listen
  await expect.poll(() => h.serving(), { timeout: 5_000 }).toContain(current!);
  return current!;
}

describe('SIGKILL of the installing process', () => {
  // Each paused step: where `current` must end after recovery.
  const cases: Array<[string, string]> = [
    ['fetch', '1.0.0'],
    ['rename', '1.0.0'],
    ['mark', '1.0.0'],
    ['swap', '1.0.0'],
    ['restart', '1.0.0'],
    ['health', '1.0.0'],
    ['commit', '2.0.0'],
  ];

  it.each(cases)('at step %s: recovery leaves a complete release (%s)', async (stepName, expected) => {
    const h = await makeHost({ store: s3.store, keys });
    hosts.push(h);
    const first = await kiln(cliArgs(h, '1.0.0'), { env });
    expect(first.code, first.stderr).toBe(0);

    await killAt(h, /paused at /, stepName);
    const rec = await kiln(['host', 'recover', 'web', '--root', h.root, '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    const { interrupted } = JSON.parse(rec.stdout);
    expect(interrupted).toMatchObject({ version: '2.0.0', outcome: expected === '2.0.0' ? 'installed' : 'interrupted' });
    expect(await expectConsistent(h)).toBe(expected);

    // and the next install goes through
    const again = await kiln(cliArgs(h, '2.0.0'), { env });
    expect(again.code, again.stderr).toBe(0);
    expect(await h.serving()).toContain('2.0.0');
  });

  it('in the middle of the download and extraction: the next install recovers by itself', async () => {
    const h = await makeHost({ store: s3.store, keys });
    hosts.push(h);
    expect((await kiln(cliArgs(h, '1.0.0'), { env })).code).toBe(0);
    await killAt(h, /fetch web 2\.0\.0/, undefined, 40);
    // no explicit recover: the install runs recovery under the lock first
    const again = await kiln(cliArgs(h, '2.0.0'), { env });
    expect(again.code, again.stderr).toBe(0);
    expect(await expectConsistent(h)).toBe('2.0.0');
  });

  // Regression: a kill after the swap-back to the old release but before its restart left the
  // failed release running, because recovery restarted only when `current` still pointed at it.
  it('after the swap-back but before the restart: recovery restarts the old release', async () => {
    const h = await makeHost({ store: s3.store, keys });
    hosts.push(h);
    expect((await kiln(cliArgs(h, '1.0.0'), { env })).code).toBe(0);
    await killAt(h, /paused at /, 'health');
    await expect.poll(() => h.serving(), { timeout: 5_000 }).toContain('2.0.0');
    await swapSymlink(appLayout(h.root, 'web').current, 'releases/1.0.0');
    const rec = await kiln(['host', 'recover', 'web', '--root', h.root]);
    expect(rec.code, rec.stderr).toBe(0);
    expect(await expectConsistent(h)).toBe('1.0.0');
  });
});
