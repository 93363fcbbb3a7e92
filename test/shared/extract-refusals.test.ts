// Malicious tarballs, crafted byte by byte, against the three doors they can come through:
// extractTarGz itself, install() over a real S3, and `kiln release push FILE.tar.gz` (publishRelease).
import { lstatSync, readdirSync, type Dirent } from 'node:fs';
import { access, constants, lstat, mkdir, mkdtemp, readFile, readdir, readlink, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_LIMITS,
  KilnError,
  appLayout,
  extractTarGz,
  install,
  publishRelease,
  sha256Hex,
  signBytes,
  type ExtractLimits,
  type FileEntry,
  type InstallStep,
  type Manifest,
} from '@kiln/shared';
import { makeHost, type Host } from '../helpers/host.js';
import { DEMO_APP, leftovers, makeKeys, pushApp, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { END, entryBytes, gzipStream, gzipZeros, headerOf, tarGz, tarOf, type CraftEntry } from '../helpers/tar-craft.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const APP = 'web';
const keys = makeKeys();
let s3: S3Fixture;
let good: Manifest;
const hosts: Host[] = [];
const temps: string[] = [];

const file = (p: string, data: string | Buffer = 'x', extra: Partial<CraftEntry> = {}): CraftEntry => ({ path: p, data, ...extra });
const link = (p: string, linkpath: string): CraftEntry => ({ path: p, type: 'SymbolicLink', linkpath, mode: 0o777 });
const claim = (p: string, data: string | Buffer, mode = 0o644): FileEntry => ({ path: p, type: 'file', size: Buffer.byteLength(data), sha256: sha256Hex(Buffer.from(data)), mode });

/** The KilnError code a call fails with, or 'ok' when it succeeds (anything else is rethrown). */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof KilnError) return err.code;
    throw err;
  }
}

// Where an escaping entry would land if it got through: none of these may appear or change.
const SENTINELS = ['/etc/passwd', '/abs', '/x', '/file', '/passwd', path.join(tmpdir(), 'x')];
const outside = async () =>
  Promise.all(SENTINELS.map((p) => lstat(p).then((s) => `${p} ${s.ino} ${s.size} ${s.nlink} ${s.mtimeMs}`, () => `${p} absent`)));
let before: string[];

/**
 * Everything under `dir`, with what must never be there: special files, setuid bits, foreign owners,
 * links leading out (but for the install's own links of persistent directories into the app's data/).
 */
async function survey(dir: string): Promise<{ bytes: number; problems: string[] }> {
  const top = await realpath(dir);
  const data = path.join(path.dirname(top), 'data');
  const out = { bytes: 0, problems: [] as string[] };
  const inside = (p: string) => p === top || p.startsWith(top + path.sep) || p.startsWith(data + path.sep);
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = await lstat(p);
      if (st.mode & 0o6000) out.problems.push(`${p}: setuid/setgid`);
      if (st.uid !== process.getuid!() || st.gid !== process.getgid!()) out.problems.push(`${p}: owned by ${st.uid}:${st.gid}`);
      if (st.isSymbolicLink()) {
        const named = path.resolve(d, await readlink(p));
        const real = await realpath(p).catch(() => named); // dangling: where it would lead
        if (!inside(named) || !inside(real)) out.problems.push(`${p}: leads out, to ${real}`);
      } else if (st.isDirectory()) await walk(p);
      else if (st.isFile()) out.bytes += st.size;
      else out.problems.push(`${p}: special file`);
    }
  };
  await walk(top);
  return out;
}

/** Extracts into <temp>/dest with no manifest (as a push does); returns the code, the time and what is beside dest. */
async function extract(source: Buffer | Readable, opts: { allowLinks?: boolean; limits?: ExtractLimits; base?: string } = {}) {
  const parent = await mkdtemp(path.join(opts.base ?? tmpdir(), 'kiln-test-x-'));
  temps.push(parent);
  const dest = path.join(parent, 'dest');
  await mkdir(dest);
  const t = Date.now();
  const code = await codeOf(extractTarGz(Buffer.isBuffer(source) ? Readable.from(source) : source, { dest, limits: opts.limits ?? DEFAULT_LIMITS, fsync: false, allowLinks: opts.allowLinks ?? false }));
  return { code, ms: Date.now() - t, dest, beside: await readdir(parent) };
}

beforeAll(async () => {
  before = await outside();
  s3 = await startS3();
  await pushApp({ store: s3.store, keys, app: APP, version: '1.0.0' });
  good = JSON.parse((await s3.store.getManifest(APP, '1.0.0')).bytes.toString('utf8'));
});
afterAll(async () => {
  await s3?.close();
  expect(await outside()).toEqual(before);
});
afterEach(async () => {
  await Promise.all(hosts.splice(0).map(async (h) => (await h.stop(), temps.push(h.root))));
  await Promise.all(temps.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('extractTarGz refuses, and writes nothing outside its directory', () => {
  const cases: Array<[string, string, CraftEntry[], boolean?]> = [
    ['an entry ../x', 'KILN_TAR_PATH', [file('ok'), file('../x')]],
    ['an entry ////abs', 'KILN_TAR_PATH', [file('////abs')]],
    ['a link to / then link/file', 'KILN_TAR_LINK', [link('link', '/'), file('link/file')]],
    ['a link to / then link/file, links allowed', 'KILN_TAR_LINK', [link('link', '/'), file('link/file')], true],
    ['a link to . then link/file, links allowed', 'KILN_TAR_LINK', [link('link', '.'), file('link/file')], true],
    // sub/l -> ".." is inside, and "sub/l/.." normalizes to "sub", but through the link it is the parent of dest
    ['a link chain climbing out (sub/l -> .., up -> sub/l/..), links allowed', 'KILN_TAR_LINK', [link('sub/l', '..'), link('up', 'sub/l/..')], true],
    // the link would race the mkdir of a/ made for a/f: if it won, a/f would be written where it points
    ['a link over a directory an earlier entry made, links allowed', 'KILN_TAR_LINK', [file('a/f'), link('a', 'b'), { path: 'b', type: 'Directory' }], true],
    ['a hard link to /etc/passwd', 'KILN_TAR_LINK', [{ path: 'passwd', type: 'Link', linkpath: '/etc/passwd' }]],
    ['a FIFO', 'KILN_TAR_SPECIAL', [{ path: 'fifo', type: 'FIFO' }]],
    ['a character device (1,3: /dev/null)', 'KILN_TAR_SPECIAL', [{ path: 'null', type: 'CharacterDevice', devmaj: 1, devmin: 3 }]],
    ['a setuid file', 'KILN_TAR_SETUID', [file('run.sh', '#!/bin/sh\n', { mode: 0o4755 })]],
    ['a setgid directory', 'KILN_TAR_SETUID', [{ path: 'bin', type: 'Directory', mode: 0o2755 }]],
    ['a file owned by 1234:1234', 'KILN_TAR_OWNER', [file('VERSION', '1\n', { uid: 1234, gid: 1234 })]],
    ['a 10,000-deep path (PAX header)', 'KILN_TAR_DEPTH', [file(`${'d/'.repeat(9_999)}f`)]],
  ];
  it.each(cases)('%s: %s', async (_name, want, entries, allowLinks) => {
    const r = await extract(tarGz(entries), { allowLinks: allowLinks ?? false });
    expect(r.code).toBe(want);
    expect(r.beside).toEqual(['dest']);
    expect((await survey(r.dest)).problems).toEqual([]);
    expect(await outside()).toEqual(before);
  });

  it('a sound tree (a dir, a link inside it, a 32-deep path) extracts: the crafting is sound', async () => {
    const r = await extract(tarGz([{ path: 'sub', type: 'Directory' }, file('sub/ok', 'fine'), link('sub/up', '../sub/ok'), file(`${'d/'.repeat(31)}f`)]), { allowLinks: true });
    expect(r.code).toBe('ok');
    expect(await readFile(path.join(r.dest, 'sub/up'), 'utf8')).toBe('fine');
    expect(await survey(r.dest)).toMatchObject({ problems: [], bytes: 5 });
  });

  it('100k entries: KILN_TAR_TOO_MANY at 50,000, while the archive is still being generated', async () => {
    let generated = 0;
    function* entries() {
      for (let i = 0; i < 100_000; i += 100) {
        const batch: Buffer[] = [];
        for (let j = i; j < i + 100; j++) batch.push(entryBytes({ path: `d${j}`, type: 'Directory', mode: 0o755 }));
        generated += 100;
        yield Buffer.concat(batch);
      }
      yield END;
    }
    // 50,000 directories are made before the refusal: on tmpfs when there is one (3x faster here)
    const base = await access('/dev/shm', constants.W_OK).then(() => '/dev/shm', () => tmpdir());
    const r = await extract(gzipStream(entries()), { base });
    expect(r.code).toBe('KILN_TAR_TOO_MANY');
    expect(generated).toBeLessThan(100_000);
    expect(r.beside).toEqual(['dest']);
    expect((await readdir(r.dest)).length).toBeLessThanOrEqual(DEFAULT_LIMITS.maxEntries);
  });
});

// 1 GiB of zeros in ~1 MB of archive. The default cap (4 GiB, no manifest) is above 1 GiB, so these
// run with a 64 MiB cap: what is checked is that the refusal comes at the cap, fast, not after.
// Through install() the cap is the manifest's own size (tarSizeBound), see below.
describe('gzip bombs are refused at the size cap, not after', () => {
  const cap: ExtractLimits = { ...DEFAULT_LIMITS, maxBytes: 64 * MiB };
  const bombs: Array<[string, () => Buffer[]]> = [
    ['one file declaring 1 GiB of zeros', () => [gzipSync(headerOf({ path: 'zeros', size: GiB })), ...gzipZeros(GiB), gzipSync(END)]],
    // node-tar skips a PAX header over 1 MiB without a look: only the byte cap sees its 1 GiB
    ['1 GiB of zeros in an oversized PAX header, then a small file', () => [gzipSync(headerOf({ path: 'PaxHeader/zeros', type: 'ExtendedHeader', size: GiB })), ...gzipZeros(GiB), gzipSync(tarOf([file('zeros', 'small')]))]],
    // node-tar buffers all bytes past the end blocks, re-concatenating per write: before the fix in
    // extractTarGz this one took 26 s for 64 MiB (quadratic), and hours for the whole GiB
    ['1 GiB of zeros past the end-of-archive blocks', () => [gzipSync(tarOf([file('zeros', 'small')])), ...gzipZeros(GiB)]],
    // every file far under the cap, their sum (1 GiB) over it: refused when the sum passes 64 MiB
    ['a thousand 1 MiB files of zeros', () => [...Array.from({ length: 1024 }, (_, i) => [gzipSync(headerOf({ path: `z${i}`, size: MiB })), ...gzipZeros(MiB)]).flat(), gzipSync(END)]],
  ];
  it.each(bombs)('%s: KILN_TAR_TOO_LARGE', async (_name, build) => {
    const parts = build();
    const size = parts.reduce((n, b) => n + b.length, 0);
    expect(size).toBeLessThan(1.5 * MiB);
    let read = 0;
    const source = Readable.from(
      (function* () {
        for (const p of parts) {
          read += p.length;
          yield p;
        }
      })(),
      { objectMode: false },
    );
    const r = await extract(source, { limits: cap });
    expect(r.code).toBe('KILN_TAR_TOO_LARGE');
    expect(r.ms).toBeLessThan(2_000);
    expect(read).toBeLessThan(size / 4); // it stopped reading the archive at the cap (1/16 of the way)
    const left = await survey(r.dest);
    expect(left.bytes).toBeLessThan(cap.maxBytes + 4 * MiB);
    expect(left.problems).toEqual([]);
    expect(r.beside).toEqual(['dest']);
  });
});

/** Uploads a hand-made release: the artifact as given, a manifest claiming `files`, signed with the pinned key. */
let crafted = 0;
async function publishCrafted(artifact: Buffer, files: FileEntry[], allowLinks = false): Promise<string> {
  const version = `2.0.${++crafted}`;
  const key = s3.store.artifactKey(APP, version);
  await s3.store.putArtifact(key, Readable.from(artifact));
  const manifest: Manifest = {
    schema: 1,
    app: APP,
    version,
    seq: 2,
    createdAt: new Date().toISOString(),
    artifact: { key, sha256: sha256Hex(artifact), size: artifact.length },
    unpackedSize: files.reduce((n, f) => n + (f.type === 'file' ? f.size : 0), 0),
    files,
    allowLinks,
    service: good.service,
    health: good.health,
  };
  const bytes = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
  await s3.store.putManifest(APP, version, { bytes, sig: signBytes(bytes, keys.key) });
  return version;
}

/** Bytes of the files under `dir` (0 when it is gone). */
function bytesUnder(dir: string): number {
  let n = 0;
  try {
    for (const e of readdirSync(dir, { withFileTypes: true, recursive: true }) as Dirent[]) if (e.isFile()) n += lstatSync(path.join(e.parentPath, e.name)).size;
  } catch {
    // removed under us: the install is over
  }
  return n;
}

/** A host serving 1.0.0, then an install of `version`: its code, the steps it reached, its time, and
 * the most bytes seen in staging while the artifact streamed in (staging is removed on failure). */
async function installOver(version: string) {
  const h = await makeHost({ store: s3.store, keys });
  hosts.push(h);
  await install({ ...h.opts(), target: { version: '1.0.0' } });
  expect(await h.serving()).toContain('1.0.0');
  const steps: InstallStep[] = [];
  const staging = appLayout(h.root, APP).staging;
  let peak = 0;
  const onProgress = () => void (peak = Math.max(peak, bytesUnder(staging)));
  const t = Date.now();
  const code = await codeOf(install({ ...h.opts({ onStep: (s) => void steps.push(s), onProgress }), target: { version } }));
  return { h, code, steps, ms: Date.now() - t, peak };
}

describe('install() over S3 refuses a crafted release and keeps serving 1.0.0', () => {
  const MB_ZEROS = Buffer.alloc(MiB);
  // [name, code, where the refusal comes, artifact, manifest files, allowLinks]
  // 'verify': the signed manifest itself is refused before anything is downloaded (no step taken);
  // 'extract': the manifest passes and the artifact is refused while streaming (step 'fetch' only).
  const cases: Array<[string, string, 'verify' | 'extract', () => Buffer, FileEntry[], boolean]> = [
    ['../x, listed as such in the manifest', 'KILN_TAR_PATH', 'verify', () => tarGz([file('../x')]), [claim('../x', 'x')], false],
    // the path check comes before the manifest lookup, so this is KILN_TAR_PATH, not KILN_TAR_MISMATCH
    ['../x in the artifact, x in the manifest', 'KILN_TAR_PATH', 'extract', () => tarGz([file('../x')]), [claim('x', 'x')], false],
    // manifest verification does not look at link targets: the extractor is what refuses them
    ['a link to / then link/file, both in a links-allowed manifest', 'KILN_TAR_LINK', 'extract', () => tarGz([link('link', '/'), file('link/file')]), [{ path: 'link', type: 'symlink', target: '/' }, claim('link/file', 'x')], true],
    ['a hard link to /etc/passwd, a plain file in the manifest', 'KILN_TAR_LINK', 'extract', () => tarGz([{ path: 'passwd', type: 'Link', linkpath: '/etc/passwd' }]), [claim('passwd', '')], false],
    ['a setuid run.sh, 0755 in the manifest', 'KILN_TAR_SETUID', 'extract', () => tarGz([file('run.sh', '#!/bin/sh\n', { mode: 0o4755 })]), [claim('run.sh', '#!/bin/sh\n', 0o755)], false],
    ['VERSION owned by 1234:1234', 'KILN_TAR_OWNER', 'extract', () => tarGz([file('VERSION', '2\n', { uid: 1234, gid: 1234 })]), [claim('VERSION', '2\n')], false],
    ['the manifest\'s files plus an extra entry', 'KILN_TAR_MISMATCH', 'extract', () => tarGz([file('VERSION', '2\n'), file('extra.js', 'evil()')]), [claim('VERSION', '2\n')], false],
    // the header's size (1 GiB) is not the manifest's (1 MiB): refused at the header, nothing written
    ['a gzip bomb: zeros declaring 1 GiB, 1 MiB in the manifest', 'KILN_TAR_MISMATCH', 'extract', () => Buffer.concat([gzipSync(headerOf({ path: 'zeros', size: GiB })), ...gzipZeros(GiB), gzipSync(END)]), [claim('zeros', MB_ZEROS)], false],
    // headers all match the manifest; only the byte cap (the manifest's size, ~1 MiB) stops the 1 GiB
    ['a gzip bomb: 1 GiB hidden in a PAX header before the 1 MiB zeros', 'KILN_TAR_TOO_LARGE', 'extract', () => Buffer.concat([gzipSync(headerOf({ path: 'PaxHeader/zeros', type: 'ExtendedHeader', size: GiB })), ...gzipZeros(GiB), gzipSync(tarOf([file('zeros', MB_ZEROS)]))]), [claim('zeros', MB_ZEROS)], false],
  ];
  it.each(cases)('%s: %s at %s', async (_name, want, where, build, files, allowLinks) => {
    const version = await publishCrafted(build(), files, allowLinks);
    const { h, code, steps, ms, peak } = await installOver(version);
    expect(code).toBe(want);
    expect(steps).toEqual(where === 'verify' ? [] : ['fetch']);
    expect(ms).toBeLessThan(3_000);
    expect(peak).toBeLessThan(2 * MiB); // the manifest's size is the cap: 1 MiB at most here
    expect(await h.current()).toBe('1.0.0');
    expect(await h.serving()).toContain('1.0.0');
    const state = await h.state();
    expect(state.current).toMatchObject({ version: '1.0.0', seq: 1 });
    // a manifest refused at verification never takes the lock: state.json does not record the attempt
    expect(state.last).toMatchObject(where === 'verify' ? { version: '1.0.0', outcome: 'installed' } : { version, outcome: 'failed', error: { code: want } });
    expect(await leftovers(h.root)).toEqual([]);
    const layout = appLayout(h.root, APP);
    expect(await readdir(layout.releases)).toEqual(['1.0.0']);
    expect((await survey(layout.releases)).problems).toEqual([]);
    expect(await outside()).toEqual(before);
  });

  it('the demo app as a hand-made release installs and serves: the crafting is sound', async () => {
    const names = ['VERSION', 'kiln.json', 'package.json', 'server.js'];
    const data = await Promise.all(names.map(async (n) => (n === 'VERSION' ? Buffer.from('crafted-ok\n') : readFile(path.join(DEMO_APP, n)))));
    const version = await publishCrafted(tarGz(names.map((n, i) => file(n, data[i]))), names.map((n, i) => claim(n, data[i]!)));
    const { h, code } = await installOver(version);
    expect(code).toBe('ok');
    expect(await h.current()).toBe(version);
    // the sample app answers with the release it runs from
    expect(await h.serving()).toContain(`kiln-demo ${version} `);
    expect((await readFile(path.join(appLayout(h.root, APP).release(version), 'VERSION'), 'utf8')).trim()).toBe('crafted-ok');
  });
});

describe('publishRelease from a crafted .tar.gz (kiln release push FILE.tar.gz)', () => {
  const app = async () => {
    const names = ['kiln.json', 'package.json', 'server.js'];
    return Promise.all(names.map(async (n) => file(n, await readFile(path.join(DEMO_APP, n)))));
  };
  const cases: Array<[string, string, CraftEntry | undefined]> = [
    ['../x', 'KILN_TAR_PATH', file('../x')],
    ['a setuid file', 'KILN_TAR_SETUID', file('run.sh', '#!/bin/sh\n', { mode: 0o4755 })],
    ['nothing bad (the crafting is sound)', 'ok', undefined],
  ];
  it.each(cases)('%s: %s, and nothing is published unless ok', async (_name, want, bad) => {
    const dir = await tempDir('kiln-test-push-');
    temps.push(dir);
    const source = path.join(dir, 'app.tar.gz');
    await writeFile(source, tarGz([file('VERSION', 'pushed\n'), ...(await app()), ...(bad ? [bad] : [])]));
    const version = `3.0.${cases.findIndex((c) => c[1] === want)}`;
    const code = await codeOf(publishRelease({ store: s3.store, app: 'pushed', version, source, key: keys.key, log: quietLog() }));
    expect(code).toBe(want);
    expect(await s3.store.manifestExists('pushed', version)).toBe(want === 'ok');
    expect(await outside()).toEqual(before);
  });
});
