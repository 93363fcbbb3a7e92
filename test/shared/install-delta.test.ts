// Format 2 (delta) releases: contents by sha256, a host fetches only what it lacks (issue 14).
import { randomBytes } from 'node:crypto';
import { appendFile, chmod, cp, readdir, lstat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, createS3Client, install, isKilnError, Manifest, sha256File, sha256Hex, signBytes, type InstallResult, type ManifestV2, type ReleaseStore } from '@kiln/shared';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { rawBucket, type RawBucket } from '../helpers/fault-s3.js';
import { makeHost, type Host } from '../helpers/host.js';
import { leftovers, makeKeys, pushApp } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let proxy: FaultProxy;
let viaProxy: ReleaseStore;
let bucket: RawBucket;
const keys = makeKeys();
const hosts: Host[] = [];

/** 40 small files (packed), one of 2 MiB (alone) and 4 texts of one size (compressed) saying `text`; `changed` gets other bytes. */
function tree(seed: Buffer[], changed?: number, text = 'a text'): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 40; i++) files[`blobs/small-${i}.bin`] = i === changed ? randomBytes(seed[i]!.length) : seed[i]!;
  files['blobs/large.bin'] = seed[40]!;
  for (let i = 0; i < 4; i++) files[`text/t${i}.txt`] = Buffer.from(`line ${i} of ${text} that compresses\n`.repeat(200));
  return files;
}
const seed = [...Array.from({ length: 40 }, (_, i) => randomBytes(4096 + i * 97)), randomBytes(2 * 1024 * 1024)];
const published: Record<string, { manifest: Manifest; uploadedBytes: number; skippedBytes: number }> = {};

beforeAll(async () => {
  s3 = await startS3();
  proxy = await startFaultProxy(s3.s3.location.endpoint!);
  viaProxy = s3.storeVia(proxy.endpoint);
  bucket = rawBucket(createS3Client(s3.s3.location), s3.s3.location.bucket);
  published['0.9.0'] = await pushApp({ store: s3.store, keys, version: '0.9.0', extra: tree(seed), format: 1 });
  published['1.0.0'] = await pushApp({ store: s3.store, keys, version: '1.0.0', extra: tree(seed) });
  published['1.0.1'] = await pushApp({ store: s3.store, keys, version: '1.0.1', extra: tree(seed, 7, 'another text') });
}, 60_000);
afterAll(async () => {
  await proxy.close();
  await s3.close();
});
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

async function host(): Promise<Host> {
  const h = await makeHost({ store: viaProxy, keys });
  hosts.push(h);
  return h;
}

/** Every entry of an installed release: path, type, mode, and the sha256 of files. */
async function listing(h: Host, version: string): Promise<string[]> {
  const top = appLayout(h.root, 'web').release(version);
  const out: string[] = [];
  for (const e of await readdir(top, { recursive: true, withFileTypes: true })) {
    const abs = path.join(e.parentPath, e.name);
    const st = await lstat(abs);
    out.push(`${path.relative(top, abs)} ${(st.mode & 0o7777).toString(8)} ${e.isFile() ? await sha256File(abs) : e.isDirectory() ? 'dir' : 'link'}`);
  }
  return out.sort();
}

/** Bytes the endpoint served to content-object GETs, counted by the proxy from the requests' Range headers. */
const objectGets = () => proxy.requests.filter((r) => r.startsWith('GET ') && r.includes('/objects/'));

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isKilnError(err)) return err.code;
    throw err;
  }
  throw new Error('expected a KilnError, but it succeeded');
}

describe('format 2 releases', () => {
  it('a push uploads only contents the bucket lacks, and says how much it skipped', () => {
    const first = published['1.0.0']!;
    const second = published['1.0.1']!;
    expect(first.manifest.schema).toBe(2);
    expect(first.uploadedBytes).toBeGreaterThan(2 * 1024 * 1024);
    // 1.0.1 changes small-7, the texts and VERSION: small contents in one new pack
    expect(second.uploadedBytes).toBeLessThan(20_000);
    expect(second.skippedBytes).toBeGreaterThan(2 * 1024 * 1024);
  });

  it('a hotfix of one changed file fetches only the changed contents and builds the tree a full install builds', async () => {
    const a = await host();
    const r0 = await install({ ...a.opts(), target: { version: '1.0.0' } });
    expect(r0.fetchedBytes).toBeGreaterThan(2 * 1024 * 1024);
    proxy.requests = [];
    const r1: InstallResult = await install({ ...a.opts(), target: { version: '1.0.1' } });
    expect(r1).toMatchObject({ outcome: 'installed', version: '1.0.1', downloaded: true });
    const m = published['1.0.1']!.manifest as ManifestV2;
    const changed = m.files.filter((f: Manifest['files'][number]) => f.type === 'file' && (f.path === 'VERSION' || f.path === 'blobs/small-7.bin' || f.path.startsWith('text/')));
    const changedStored = changed.reduce((n: number, f: Manifest['files'][number]) => n + m.content.blobs[(f as { sha256: string }).sha256]!.length, 0);
    // only the new pack, in one ranged GET, and about the changed bytes
    expect(objectGets()).toHaveLength(1);
    expect(r1.fetchedBytes).toBe(changedStored);
    expect(r1.releaseBytes).toBeGreaterThan(100 * r1.fetchedBytes!);
    expect(await a.serving()).toContain('1.0.1');

    const b = await host();
    await install({ ...b.opts(), target: { version: '1.0.1' } });
    expect(await listing(a, '1.0.1')).toEqual(await listing(b, '1.0.1'));
    expect(await leftovers(a.root)).toEqual([]);
  });

  it('a format 1 release still installs, and a format 2 one reuses its files', async () => {
    const h = await host();
    const r0 = await install({ ...h.opts(), target: { version: '0.9.0' } });
    expect(r0.fetchedBytes).toBe((published['0.9.0']!.manifest as { artifact: { size: number } }).artifact.size);
    proxy.requests = [];
    const r1 = await install({ ...h.opts(), target: { version: '1.0.0' } });
    // everything but VERSION and kiln.json-free differences is on disk already: the large file is not fetched
    expect(objectGets().every((g) => g.includes('/pack-'))).toBe(true);
    expect(r1.fetchedBytes).toBeLessThan(10_000);
    expect(await h.serving()).toContain('1.0.0');
  });

  it('an instance launched from an image holding the previous release fetches only the difference (stamps differ: re-hashed)', async () => {
    const image = await host();
    await install({ ...image.opts(), target: { version: '1.0.0' } });
    await image.service.stop();
    // What the process provider does to launch an instance: a copy of the image's root (new inodes).
    const h = await host();
    await cp(image.root, h.root, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
    proxy.requests = [];
    const r = await install({ ...h.opts(), target: { version: '1.0.1' } });
    const m = published['1.0.1']!.manifest as ManifestV2;
    expect(r.fetchedBytes).toBeLessThan(20_000);
    expect(r.releaseBytes).toBe(Object.values(m.content.blobs).reduce((n, b) => n + b.length, 0));
    expect(objectGets()).toHaveLength(1);
    expect(await h.serving()).toContain('1.0.1');
  });

  it('re-fetches a local file modified since it was written (stamp and digest differ), and reuses one only touched', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const old = appLayout(h.root, 'web').release('1.0.0');
    await appendFile(path.join(old, 'blobs/small-3.bin'), 'tampered');
    await appendFile(path.join(old, 'blobs/large.bin'), 'x'); // size differs: not a candidate
    const now = new Date();
    await utimes(path.join(old, 'blobs/small-4.bin'), now, now); // stamp differs, content the same: re-hashed, reused
    proxy.requests = [];
    const r = await install({ ...h.opts(), target: { version: '1.0.1' } });
    expect(r.outcome).toBe('installed');
    const m = published['1.0.1']!.manifest as ManifestV2;
    const stored = (p: string) => m.content.blobs[(m.files.find((f: Manifest['files'][number]) => f.path === p) as { sha256: string }).sha256]!.length;
    expect(r.fetchedBytes).toBeGreaterThanOrEqual(stored('blobs/large.bin') + stored('blobs/small-3.bin'));
    expect(r.fetchedBytes).toBeLessThan(stored('blobs/large.bin') + 200_000);
    const fresh = appLayout(h.root, 'web').release('1.0.1');
    // (digests, not bytes: a deep compare of 2 MiB takes seconds)
    const same = async (p: string, want: Buffer) => expect(await sha256File(path.join(fresh, p))).toBe(sha256Hex(want));
    await same('blobs/small-3.bin', seed[3]!);
    await same('blobs/small-4.bin', seed[4]!);
    await same('blobs/large.bin', seed[40]!);
  });
});

describe('format 2: copy or link', () => {
  const inode = async (h: Host, version: string, p: string) => (await lstat(path.join(appLayout(h.root, 'web').release(version), p))).ino;

  it('copies reused files where the app can write release files (the process supervisor)', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    await install({ ...h.opts(), target: { version: '1.0.1' } });
    expect(await inode(h, '1.0.1', 'blobs/large.bin')).not.toBe(await inode(h, '1.0.0', 'blobs/large.bin'));
  });

  it('hard-links reused files where the app cannot write them (a service manager with appReadOnly, as systemd), never a writable one', async () => {
    const h = await host();
    const service = Object.assign(Object.create(null) as object, h.service, { appReadOnly: true }) as typeof h.service;
    await install({ ...h.opts({ service }), target: { version: '1.0.0' } });
    const old = appLayout(h.root, 'web').release('1.0.0');
    await chmod(path.join(old, 'blobs/small-5.bin'), 0o664); // group-writable here: must not be shared
    const r = await install({ ...h.opts({ service }), target: { version: '1.0.1' } });
    expect(r.outcome).toBe('installed');
    expect(await inode(h, '1.0.1', 'blobs/large.bin')).toBe(await inode(h, '1.0.0', 'blobs/large.bin'));
    expect(await inode(h, '1.0.1', 'blobs/small-5.bin')).not.toBe(await inode(h, '1.0.0', 'blobs/small-5.bin'));
    expect(((await lstat(path.join(appLayout(h.root, 'web').release('1.0.1'), 'blobs/small-5.bin'))).mode & 0o777).toString(8)).toBe('644');
  });
});

describe('format 2 refusals: the old release keeps serving', () => {
  /** Publishes `version` as a copy of 1.0.1's manifest changed by `edit`, signed with the pinned key. */
  async function craft(version: string, edit: (m: ManifestV2) => void): Promise<void> {
    const m = structuredClone(published['1.0.1']!.manifest) as ManifestV2;
    m.version = version;
    m.seq += 100;
    edit(m);
    const bytes = Buffer.from(JSON.stringify(Manifest.parse(m)));
    await s3.store.putManifest('web', version, { bytes, sig: signBytes(bytes, keys.key) });
  }

  async function refused(version: string): Promise<string> {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    // a fresh host would reuse nothing; drop the local copies so every content is fetched
    const code = await codeOf(install({ ...h.opts(), target: { version } }));
    expect(await h.current()).toBe('1.0.0');
    expect(await h.serving()).toContain('1.0.0');
    expect(await leftovers(h.root)).toEqual([]);
    expect(await readdir(appLayout(h.root, 'web').releases)).toEqual(['1.0.0']);
    return code;
  }

  it('refuses a pack whose bytes were altered', async () => {
    const m = published['1.0.1']!.manifest as ManifestV2;
    const small7 = m.files.find((f: Manifest['files'][number]) => f.path === 'blobs/small-7.bin') as { sha256: string };
    const blob = m.content.blobs[small7.sha256]!;
    const key = s3.store.objectKey('web', m.content.objects[blob.object]!.name);
    const good = await bucket.get(key);
    const bad = Buffer.from(good);
    bad[blob.offset + Math.floor(blob.length / 2)]! ^= 0xff;
    await bucket.put(key, bad);
    try {
      expect(['KILN_OBJECT_DIGEST', 'KILN_OBJECT_CORRUPT']).toContain(await refused('1.0.1'));
    } finally {
      await bucket.put(key, good);
    }
  });

  it('refuses a pack cut short, at once (no retries): KILN_OBJECT_CORRUPT', async () => {
    const m = published['1.0.1']!.manifest as ManifestV2;
    const small7 = m.files.find((f: Manifest['files'][number]) => f.path === 'blobs/small-7.bin') as { sha256: string };
    const object = m.content.objects[m.content.blobs[small7.sha256]!.object]!;
    const key = s3.store.objectKey('web', object.name);
    const good = await bucket.get(key);
    for (const cut of [good.length - 10, 10]) {
      await bucket.put(key, good.subarray(0, cut));
      try {
        expect(await refused('1.0.1')).toBe('KILN_OBJECT_CORRUPT');
      } finally {
        await bucket.put(key, good);
      }
    }
  });

  it('refuses a pack whose index lies (two contents swapped): KILN_OBJECT_DIGEST', async () => {
    await craft('1.0.2-swapped', (m) => {
      const [a, b] = m.files.filter((f: Manifest['files'][number]) => f.path === 'text/t0.txt' || f.path === 'text/t1.txt') as Array<{ sha256: string }>;
      const ba = m.content.blobs[a!.sha256]!;
      m.content.blobs[a!.sha256] = m.content.blobs[b!.sha256]!;
      m.content.blobs[b!.sha256] = ba;
    });
    expect(await refused('1.0.2-swapped')).toBe('KILN_OBJECT_DIGEST');
  });

  it('refuses a content that expands past its declared size: KILN_OBJECT_CORRUPT', async () => {
    await craft('1.0.2-bomb', (m) => {
      const v = m.files.find((f: Manifest['files'][number]) => f.path === 'text/t2.txt') as { sha256: string; size: number };
      m.unpackedSize -= v.size - 100;
      v.size = 100;
    });
    expect(await refused('1.0.2-bomb')).toBe('KILN_OBJECT_CORRUPT');
  });

  it('refuses a manifest naming an object the bucket lacks: KILN_OBJECT_MISSING', async () => {
    await craft('1.0.2-missing', (m) => {
      const v = m.files.find((f: Manifest['files'][number]) => f.path === 'blobs/small-7.bin') as { sha256: string };
      const name = `pack-${sha256Hex(Buffer.from('nowhere'))}`;
      m.content.objects.push({ name, size: 10_000 });
      m.content.blobs[v.sha256] = { object: m.content.objects.length - 1, offset: 0, length: 100, encoding: 'gzip' };
    });
    expect(await refused('1.0.2-missing')).toBe('KILN_OBJECT_MISSING');
  });

  it('refuses a manifest whose index points past an object: KILN_MANIFEST_INVALID', async () => {
    const m = structuredClone(published['1.0.1']!.manifest) as ManifestV2;
    m.content.blobs[Object.keys(m.content.blobs)[0]!]!.offset = m.content.objects[0]!.size;
    expect(Manifest.safeParse(m).success).toBe(false);
  });
});
