import { chmod, mkdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KilnError,
  appLayout,
  TreeCheck,
  checkName,
  createDocStore,
  createS3Client,
  findPointer,
  install,
  listReleases,
  promoteRelease,
  publishRelease,
  readPointer,
  scanTree,
  showRelease,
  signBytes,
  verifyBytes,
} from '@kiln/shared';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { makeHost } from '../helpers/host.js';
import { freePort, makeApp, makeKeys, pushApp, quietLog } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
const keys = makeKeys();

beforeAll(async () => {
  s3 = await startS3();
});
afterAll(() => s3.close());

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    if (err instanceof KilnError) return err.code;
    throw err;
  }
  throw new Error('expected a KilnError, but it succeeded');
}

describe('names', () => {
  it.each([
    ['app', 'Web'],
    ['app', '../x'],
    ['app', ''],
    ['app', 'a'.repeat(64)],
    ['version', '..'],
    ['version', '1.0/2'],
    ['version', '-1'],
    ['channel', 'stable/x'],
  ] as const)('%s %j is refused with KILN_NAME_INVALID', async (kind, value) => {
    expect(await codeOf(() => checkName(kind, value))).toBe('KILN_NAME_INVALID');
  });

  it.each([
    ['app', 'web-2'],
    ['version', '1.2.3-rc.1+build.5'],
    ['channel', 'stable'],
  ] as const)('%s %j is accepted', (kind, value) => {
    expect(checkName(kind, value)).toBe(value);
  });
});

describe('signing', () => {
  const bytes = Buffer.from('{"a":1}');

  it('verifies the exact bytes with a pinned key', () => {
    expect(verifyBytes(bytes, signBytes(bytes, keys.key), keys.keys, 'x')).toBe(keys.keys[0]!.keyId);
  });

  it('refuses altered bytes (KILN_SIGNATURE_INVALID) and an unknown key (KILN_SIGNATURE_UNKNOWN_KEY)', async () => {
    const sig = signBytes(bytes, keys.key);
    expect(await codeOf(() => verifyBytes(Buffer.from('{"a":2}'), sig, keys.keys, 'x'))).toBe('KILN_SIGNATURE_INVALID');
    expect(await codeOf(() => verifyBytes(bytes, sig, makeKeys().keys, 'x'))).toBe('KILN_SIGNATURE_UNKNOWN_KEY');
    expect(await codeOf(() => verifyBytes(bytes, Buffer.from('not json'), keys.keys, 'x'))).toBe('KILN_SIGNATURE_INVALID');
  });
});

describe('publish', () => {
  it('writes artifact, manifest and signature; seq grows per app; versions are immutable', async () => {
    const a = await pushApp({ store: s3.store, keys, app: 'pub', version: '1.0.0' });
    const b = await pushApp({ store: s3.store, keys, app: 'pub', version: '1.1.0' });
    const other = await pushApp({ store: s3.store, keys, app: 'pub-other', version: '1.0.0' });
    expect([a.manifest.seq, b.manifest.seq, other.manifest.seq]).toEqual([1, 2, 1]);
    expect(a.manifest.files.map((f) => f.path).sort()).toEqual(['VERSION', 'kiln.json', 'package.json', 'server.js']);
    expect(a.manifest.service.command).toEqual(['node', 'server.js']);
    expect(a.manifest.health).toMatchObject({ type: 'http', path: '/healthz' });
    expect(await codeOf(pushApp({ store: s3.store, keys, app: 'pub', version: '1.0.0' }))).toBe('KILN_RELEASE_EXISTS');

    const list = await listReleases(s3.store, 'pub', keys.keys);
    expect(list.map((r) => [r.version, r.seq, r.verified])).toEqual([
      ['1.0.0', 1, true],
      ['1.1.0', 2, true],
    ]);
    const shown = await showRelease(s3.store, 'pub', '1.1.0', keys.keys);
    expect(shown.manifestSha256).toBe(b.manifestSha256);
    // a manifest the bucket holds that does not parse is KILN_MANIFEST_INVALID naming it (was a bare ZodError: a 500)
    await createS3Client(s3.s3.location).send(new PutObjectCommand({ Bucket: s3.s3.location.bucket, Key: 'releases/pub-other/1.0.0/manifest.json', Body: '{"schema": 1}' }));
    await expect(showRelease(s3.store, 'pub-other', '1.0.0', keys.keys)).rejects.toMatchObject({ code: 'KILN_MANIFEST_INVALID', message: expect.stringMatching(/^the manifest of pub-other 1\.0\.0 /) });
    // a reader with other pinned keys sees the release as untrusted
    expect((await listReleases(s3.store, 'pub', makeKeys().keys)).every((r) => !r.verified)).toBe(true);
  });

  it('needs a run command (kiln.json or flags): KILN_APP_SPEC_INVALID', async () => {
    const dir = await makeApp('x', {}, { health: { type: 'none' } });
    expect(await codeOf(publishRelease({ store: s3.store, app: 'spec', version: '1', source: dir, key: keys.key, log: quietLog() }))).toBe('KILN_APP_SPEC_INVALID');
    const bad = await makeApp('x', {}, { service: { command: [] } });
    expect(await codeOf(publishRelease({ store: s3.store, app: 'spec', version: '1', source: bad, key: keys.key, log: quietLog() }))).toBe('KILN_APP_SPEC_INVALID');
    const ok = await publishRelease({ store: s3.store, app: 'spec', version: '1', source: dir, key: keys.key, log: quietLog(), spec: { command: ['node', 'server.js'], port: 9000 } });
    expect(ok.manifest.service).toMatchObject({ command: ['node', 'server.js'], port: 9000 });
  });

  it('refuses what a release cannot carry: setuid, FIFOs, links unless allowed, links leaving the tree', async () => {
    const suid = await makeApp('x', { 'bin/tool': '#!/bin/sh\n' });
    await chmod(path.join(suid, 'bin/tool'), 0o4755);
    expect(await codeOf(scanTree(suid, { allowLinks: false }))).toBe('KILN_PACK_INVALID');

    const fifo = await makeApp('x');
    execFileSync('mkfifo', [path.join(fifo, 'pipe')]);
    expect(await codeOf(scanTree(fifo, { allowLinks: false }))).toBe('KILN_PACK_INVALID');

    const links = await makeApp('x');
    await symlink('server.js', path.join(links, 'main.js'));
    expect(await codeOf(scanTree(links, { allowLinks: false }))).toBe('KILN_PACK_INVALID');
    expect((await scanTree(links, { allowLinks: true })).find((e) => e.path === 'main.js')).toEqual({ path: 'main.js', type: 'symlink', target: 'server.js' });
    await mkdir(path.join(links, 'sub'));
    await symlink('../../etc', path.join(links, 'sub/escape'));
    expect(await codeOf(scanTree(links, { allowLinks: true }))).toBe('KILN_TAR_LINK');
  });

  it('refuses a link chain that climbs out through another link (sub/l -> .., up -> sub/l/..)', async () => {
    const chain = await makeApp('x');
    await mkdir(path.join(chain, 'sub'));
    await symlink('..', path.join(chain, 'sub/l'));
    await symlink('sub/l/..', path.join(chain, 'up'));
    expect(await codeOf(scanTree(chain, { allowLinks: true }))).toBe('KILN_TAR_LINK');
  });

  it('ships links that stay inside when kiln.json allows them, and installs them', async () => {
    const dir = await makeApp('x', {}, { service: { command: ['node', 'server.js'] }, allowLinks: true });
    await symlink('server.js', path.join(dir, 'main.js'));
    await writeFile(path.join(dir, 'data.txt'), 'x');
    const r = await publishRelease({ store: s3.store, app: 'links', version: '1', source: dir, key: keys.key, log: quietLog() });
    expect(r.manifest.allowLinks).toBe(true);
    const h = await makeHost({ store: s3.store, keys, app: 'links' });
    try {
      await install({ ...h.opts(), target: { version: '1' } });
      expect(await readlink(path.join(appLayout(h.root, 'links').release('1'), 'main.js'))).toBe('server.js');
    } finally {
      await h.stop();
    }
  });
});

describe('promote', () => {
  it('writes a signed pointer whose seq grows with every promote, rollbacks included', async () => {
    await pushApp({ store: s3.store, keys, app: 'promo', version: '1' });
    await pushApp({ store: s3.store, keys, app: 'promo', version: '2' });
    const p1 = await promoteRelease({ store: s3.store, app: 'promo', version: '1', channel: 'stable', key: keys.key, keys: keys.keys, ttlMs: 60_000 });
    const p2 = await promoteRelease({ store: s3.store, app: 'promo', version: '2', channel: 'stable', key: keys.key, keys: keys.keys, ttlMs: 60_000 });
    const back = await promoteRelease({ store: s3.store, app: 'promo', version: '1', channel: 'stable', key: keys.key, keys: keys.keys, ttlMs: 60_000 });
    expect([p1.seq, p2.seq, back.seq]).toEqual([1, 2, 3]);
    expect(await readPointer(s3.store, 'promo', 'stable', keys.keys)).toMatchObject({ version: '1', seq: 3 });
    expect(Date.parse(back.expires) - Date.parse(back.createdAt)).toBe(60_000);
  });

  it('refuses an unknown version (KILN_RELEASE_NOT_FOUND) and a release not signed by a pinned key', async () => {
    expect(await codeOf(promoteRelease({ store: s3.store, app: 'promo', version: '9', channel: 'stable', key: keys.key, keys: keys.keys, ttlMs: 1 }))).toBe('KILN_RELEASE_NOT_FOUND');
    const stranger = makeKeys();
    expect(await codeOf(promoteRelease({ store: s3.store, app: 'promo', version: '2', channel: 'beta', key: stranger.key, keys: stranger.keys, ttlMs: 1 }))).toBe('KILN_SIGNATURE_UNKNOWN_KEY');
  });

  it('findPointer: only an absent pointer is undefined; a bucket that is away or a pointer of a stranger is thrown with its code', async () => {
    await pushApp({ store: s3.store, keys, app: 'finder', version: '1', channel: 'stable' });
    expect(await findPointer(s3.store, 'finder', 'none', keys.keys)).toBeUndefined();
    expect(await findPointer(s3.store, 'finder', 'stable', keys.keys)).toMatchObject({ version: '1', seq: 1 });
    expect(await codeOf(findPointer(s3.store, 'finder', 'stable', makeKeys().keys))).toBe('KILN_SIGNATURE_UNKNOWN_KEY');
    const down = s3.storeVia(`http://127.0.0.1:${await freePort()}`, { maxAttempts: 1, connectTimeoutMs: 500 });
    expect(await codeOf(findPointer(down, 'finder', 'stable', keys.keys))).toBe('KILN_S3_UNREACHABLE');
  });

  it('a push whose reads of the earlier manifests fail is refused, instead of reusing their seq', async () => {
    await pushApp({ store: s3.store, keys, app: 'seqs', version: '1' });
    const proxy = await startFaultProxy(s3.s3.location.endpoint!, 'truncate', { damages: (req) => req.method === 'GET' && /\/seqs\/[^/]+\/manifest\.json/.test(req.url!) });
    try {
      expect(await codeOf(pushApp({ store: s3.storeVia(proxy.endpoint, { maxAttempts: 1 }), keys, app: 'seqs', version: '2' }))).toBe('KILN_S3_UNREACHABLE');
    } finally {
      await proxy.close();
    }
    expect((await listReleases(s3.store, 'seqs', keys.keys)).map((r) => [r.version, r.seq])).toEqual([['1', 1]]);
  });

  it('listReleases fails when the manifests cannot be read, instead of listing no release', async () => {
    const proxy = await startFaultProxy(s3.s3.location.endpoint!, 'truncate', { damages: (req) => req.method === 'GET' && /\/finder\/[^/]+\/manifest\.json/.test(req.url!) });
    try {
      expect(await codeOf(listReleases(s3.storeVia(proxy.endpoint, { maxAttempts: 1 }), 'finder', keys.keys))).toBe('KILN_S3_UNREACHABLE');
    } finally {
      await proxy.close();
    }
  });
});

describe('records (the controller state in the bucket)', () => {
  it('a read cut short (the connection dropped mid-body) is read again; one that keeps failing gives KILN_S3_UNREACHABLE after 3 tries', async () => {
    const proxy = await startFaultProxy(s3.s3.location.endpoint!, 'truncate', { damages: (req) => req.method === 'GET' && req.url!.includes('/records/') });
    try {
      const direct = createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket, 'records/');
      const via = createDocStore(createS3Client({ ...s3.s3.location, endpoint: proxy.endpoint }), s3.s3.location.bucket, 'records/');
      const doc: TreeCheck = { status: 'modified', modified: 1, missing: 0, extra: 0, paths: ['M server.js'], checkedAt: new Date().toISOString() };
      await direct.put('web.json', doc);
      const schema = TreeCheck;
      proxy.faultsLeft = 1;
      expect(await via.get('web.json', schema)).toEqual(doc);
      const gets = () => proxy.requests.filter((r) => r.startsWith('GET ')).length;
      expect(gets()).toBe(2);
      proxy.faultsLeft = Infinity;
      expect(await codeOf(via.get('web.json', schema))).toBe('KILN_S3_UNREACHABLE');
      expect(gets()).toBe(5);
    } finally {
      await proxy.close();
    }
  });
});
