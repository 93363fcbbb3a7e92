// Regression (issue 16, item 14): a signed manifest listing the same path twice was accepted, and
// `kiln host install` installed it: the install keys the file list by path, so the second entry
// silently replaced the first. The manifest schema now refuses it (KILN_MANIFEST_INVALID) wherever a
// manifest is read, and publish checks what it is about to sign by the same schema.
import { execFileSync } from 'node:child_process';
import { rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manifest, signBytes } from '@kiln/shared';
import { kiln } from '../helpers/cli.js';
import { makeHost, type Host } from '../helpers/host.js';
import { makeApp, makeKeys, pushApp, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let dir: string;
let pubFile: string;
const hosts: Host[] = [];
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };

beforeAll(async () => {
  s3 = await startS3();
  dir = await tempDir('kiln-test-twice-');
  pubFile = path.join(dir, 'release.pub');
  await writeFile(pubFile, keys.publicPem);
  await pushApp({ store: s3.store, keys, version: '1.0.0' });
  // 1.0.1: the manifest of 1.0.0 (same artifact) with server.js listed a second time, signed by the pinned key.
  const good = await s3.store.getManifest('web', '1.0.0');
  const m = Manifest.parse(JSON.parse(good.bytes.toString('utf8')));
  const twice = m.files.find((f) => f.path === 'server.js')!;
  const bytes = Buffer.from(JSON.stringify({ ...m, version: '1.0.1', seq: m.seq + 1, files: [...m.files, twice] }, null, 2) + '\n');
  await s3.store.putManifest('web', '1.0.1', { bytes, sig: signBytes(bytes, keys.key) });
}, 60_000);
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await Promise.all(hosts.map((h) => rm(h.root, { recursive: true, force: true })));
  await rm(dir, { recursive: true, force: true });
  await s3.close();
});

const installArgs = (h: Host, version: string) => ['host', 'install', 'web', '--version', version, '--root', h.root, '--port', String(h.port), '--bucket', 'kiln', '--s3-endpoint', s3.s3.location.endpoint!, '--trust', pubFile];

describe('a manifest listing a path twice is refused as invalid', () => {
  it('kiln host install refuses a signed manifest that lists server.js twice (KILN_MANIFEST_INVALID naming the path); nothing is installed', async () => {
    const h = await makeHost({ keys });
    hosts.push(h);
    const r = await kiln(installArgs(h, '1.0.1'), { env });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(/KILN_MANIFEST_INVALID/);
    expect(r.stderr).toMatch(/"server\.js" is listed twice/);
    expect(await h.current()).toBeNull();
    // the same release listed once installs
    const ok = await kiln(installArgs(h, '1.0.0'), { env });
    expect(ok.code, ok.stderr).toBe(0);
    expect(await h.current()).toBe('1.0.0');
  });

  it('kiln release push of a tarball that carries a path twice is refused before anything is uploaded', async () => {
    const app = await makeApp('2.0.0');
    const tgz = path.join(dir, 'twice.tar.gz');
    // "." and "server.js": GNU tar stores server.js twice (the second time as a copy, not a hard link)
    execFileSync('tar', ['-czf', tgz, '--hard-dereference', '-C', app, '.', 'server.js']);
    const keyFile = path.join(dir, 'release.key');
    await writeFile(keyFile, keys.privatePem, { mode: 0o600 });
    const r = await kiln(['release', 'push', tgz, '--app', 'web', '--version', '2.0.0', '--bucket', 'kiln', '--s3-endpoint', s3.s3.location.endpoint!, '--key', keyFile], { env });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(/server\.js appears twice/);
    expect(await s3.store.manifestExists('web', '2.0.0')).toBe(false);
    await expect(stat(tgz)).resolves.toBeTruthy();
    await rm(app, { recursive: true, force: true });
  });
});
