import { createHash } from 'node:crypto';
import { chmodSync, chownSync, closeSync, constants as fsc, fchmodSync, fchownSync, fstatSync, lchownSync, lstatSync, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs';
import { copyFile, link, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { createGunzip, gunzip } from 'node:zlib';
import type { Logger } from 'pino';
import { KilnError, asKilnError } from '../errors/kiln-error.js';
import type { AppLayout } from '../release/install-layout.js';
import type { VerifiedManifest } from '../release/release-resolve.js';
import type { Blob, FileEntry, ManifestV2 } from '../release/release-schema.js';
import type { ReleaseStore } from '../release/release-store.js';
import { flushToDisk, type ExtractLimits, type ExtractedFile } from '../release/safe-extract.js';
import { checkLinkInside, fileStamp, sha256File } from '../release/scan-tree.js';
import { s3Error, TRANSIENT_S3_CODES } from '../s3/s3-errors.js';
import { backoffDelay } from '../system/backoff.js';
import { hasErrno } from '../system/fs-errors.js';
import { allSettledOrThrow, runPool } from '../system/run-pool.js';
import { artifactMeter } from './artifact-meter.js';
import { checkLocalCopy, localContents, type LocalCopy } from './local-contents.js';

const gunzipAsync = promisify(gunzip);

/** Needed contents closer than this in one object are fetched by one ranged GET (the gap is read and dropped). */
const RANGE_GAP = 64 * 1024;
/** A ranged GET is read whole into memory up to this; a content larger than this streams on its own. */
const RANGE_MAX = 8 * 1024 * 1024;
/** Ranged GETs in flight: enough to keep both the network and every core (zlib runs on the thread pool) busy. */
const IN_FLIGHT = 6;

export interface BuildOptions {
  store: ReleaseStore | undefined;
  verified: VerifiedManifest & { manifest: ManifestV2 };
  /** an empty directory to build the tree in */
  tree: string;
  layout: AppLayout;
  limits: ExtractLimits;
  owner?: { uid: number; gid: number } | undefined;
  /** the app cannot write release files: a content with the same mode may be hard-linked from another release */
  share: boolean;
  fsync: boolean;
  attempts: number;
  idleTimeoutMs: number;
  log: Logger;
  onProgress?: ((bytes: number, total: number) => void) | undefined;
}

export interface BuildResult {
  files: ExtractedFile[];
  /** bytes read from the bucket */
  fetchedBytes: number;
  /** file bytes taken from releases already on this host */
  reusedBytes: number;
  linked: number;
  copied: number;
}

type FileOf = Extract<FileEntry, { type: 'file' }>;
interface Need {
  sha: string;
  size: number;
  blob: Blob;
  files: FileOf[];
}
interface Range {
  object: { name: string; size: number };
  start: number;
  end: number;
  needs: Need[];
}

/**
 * Builds a format 2 release's tree from the files this host already has (complete releases, checked
 * by stamp or digest) and the contents it lacks, fetched by ranged GETs several at once, each
 * decompressed (on the thread pool), capped at its declared size and checked against the signed
 * manifest's sha256 before a byte of it is written. Every refusal of the tar extractor applies.
 */
export async function buildFromObjects(o: BuildOptions): Promise<BuildResult> {
  const m = o.verified.manifest;
  const total = m.files.reduce((n, f) => n + (f.type === 'file' ? f.size : 0), 0);
  if (total > o.limits.maxBytes) throw new KilnError('KILN_TAR_TOO_LARGE', `${m.app} ${m.version} lists ${total} bytes of files, over the limit of ${o.limits.maxBytes}`);
  const dirs = layOut(o);

  const written: ExtractedFile[] = [];
  const paths: string[] = [];
  let done = 0;
  const progress = (n: number) => o.onProgress?.((done += n), total);
  const byContent = new Map<string, FileOf[]>();
  for (const f of m.files) if (f.type === 'file') byContent.set(f.sha256, [...(byContent.get(f.sha256) ?? []), f]);

  // Contents already on this host: checked first (a stamp, else a hash), then linked or copied.
  const local = await localContents(o.layout, m.version);
  const fromHost: Array<{ sha: string; copy: LocalCopy; stamp: string }> = [];
  const needs: Need[] = [];
  await runPool([...byContent.keys()], 8, async (sha) => {
    for (const c of local.get(sha) ?? []) {
      const stamp = await checkLocalCopy(c, sha);
      if (stamp) return void fromHost.push({ sha, copy: c, stamp });
    }
    needs.push({ sha, size: byContent.get(sha)![0]!.size, blob: m.content.blobs[sha]!, files: byContent.get(sha)! });
  });
  if (needs.length && !o.store) throw new KilnError('KILN_NOT_INSTALLED', `${m.app} ${m.version} needs ${needs.length} contents this host lacks and no bucket was given to fetch them from`);

  let linked = 0;
  let copied = 0;
  let reusedBytes = 0;
  const placeLocal = async ({ sha, copy, stamp }: (typeof fromHost)[number]) => {
    for (const f of byContent.get(sha)!) {
      const dest = path.join(o.tree, f.path);
      if (await tryLink(o, copy.file, dest, f)) linked++;
      else {
        await copyFile(copy.file, dest, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE);
        // The source could change while it was copied (an app that writes its own release): then the copy is re-read.
        const after = lstatSync(copy.file);
        if (fileStamp(after) !== stamp && (await sha256File(dest)) !== sha) throw new KilnError('KILN_OBJECT_DIGEST', `${copy.file} changed while it was copied into ${m.version}`);
        finish(o, dest, f);
        copied++;
      }
      written.push({ path: f.path, sha256: sha, stamp: fileStamp(lstatSync(dest)) });
      paths.push(dest);
      reusedBytes += f.size;
      progress(f.size);
    }
  };

  let fetchedBytes = 0;
  /** Writes a verified content to every path that has it. */
  const place = (need: Need, data: Buffer) => {
    for (const f of need.files) {
      const dest = path.join(o.tree, f.path);
      const fd = openSync(dest, 'wx', 0o600);
      try {
        for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
        finishFd(o, fd, f);
        written.push({ path: f.path, sha256: need.sha, stamp: fileStamp(fstatSync(fd)) });
      } finally {
        closeSync(fd);
      }
      paths.push(dest);
      progress(f.size);
    }
  };
  const ranges = planRanges(m, needs);
  const fetchRange = async (r: Range) => {
    const key = o.store!.objectKey(m.app, r.object.name);
    for (let attempt = 1; ; attempt++) {
      try {
        if (r.needs.length === 1 && r.needs[0]!.blob.length > RANGE_MAX) await streamOne(o, key, r, written, paths, progress);
        else {
          const bytes = await readRange(o, key, r);
          await allSettledOrThrow(r.needs.map(async (need) => place(need, await decode(need, bytes.subarray(need.blob.offset - r.start, need.blob.offset - r.start + need.blob.length), r.object.name))));
        }
        fetchedBytes += r.end - r.start + 1;
        return;
      } catch (err) {
        const e = asKilnError(err, 'KILN_INSTALL_FAILED');
        if (!TRANSIENT_S3_CODES.has(e.code) || attempt >= o.attempts) throw err;
        o.log.warn({ err: e, object: r.object.name, attempt }, 'content download failed; retrying');
        for (const need of r.needs) for (const f of need.files) await rm(path.join(o.tree, f.path), { force: true });
        await sleep(backoffDelay(attempt, { baseMs: 200, capMs: 5_000 }));
      }
    }
  };
  await allSettledOrThrow([runPool(fromHost, 4, placeLocal), runPool(ranges, IN_FLIGHT, fetchRange)]);

  // Links last (nothing lies behind one), then directory modes, deepest first.
  for (const f of m.files) {
    if (f.type !== 'symlink') continue;
    const abs = path.join(o.tree, f.path);
    symlinkSync(f.target, abs);
    if (o.owner) lchownSync(abs, o.owner.uid, o.owner.gid);
  }
  for (const [d, mode] of [...dirs].sort((a, b) => b[0].split('/').length - a[0].split('/').length)) {
    const abs = path.join(o.tree, d);
    if (o.owner) chownSync(abs, o.owner.uid, o.owner.gid);
    chmodSync(abs, mode);
  }
  if (o.fsync) await flushToDisk(o.tree, [...paths, o.tree, ...[...dirs.keys()].map((d) => path.join(o.tree, d))]);
  return { files: written, fetchedBytes, reusedBytes, linked, copied };
}

/**
 * Makes the directories and checks the entries as the tar extractor would: links only when allowed and
 * inside the release, nothing behind a link, nothing under a file. Returns every directory with its mode.
 */
function layOut(o: BuildOptions): Map<string, number> {
  const m = o.verified.manifest;
  const kinds = new Map(m.files.map((f) => [f.path, f]));
  const dirs = new Map<string, number>();
  for (const f of m.files) {
    for (let i = f.path.indexOf('/'); i !== -1; i = f.path.indexOf('/', i + 1)) {
      const parent = kinds.get(f.path.slice(0, i));
      if (parent?.type === 'symlink') throw new KilnError('KILN_TAR_LINK', `${f.path} lies behind the link ${parent.path}`);
      if (parent?.type === 'file') throw new KilnError('KILN_MANIFEST_INVALID', `${f.path} lies under ${parent.path}, which the manifest lists as a file`);
      if (!parent) dirs.set(f.path.slice(0, i), dirs.get(f.path.slice(0, i)) ?? 0o755);
    }
    if (f.type === 'dir') dirs.set(f.path, f.mode);
    if (f.type === 'symlink') {
      if (!m.allowLinks) throw new KilnError('KILN_TAR_LINK', `${f.path} is a symbolic link and this release does not allow links`);
      checkLinkInside(f.path, f.target);
    }
  }
  for (const d of [...dirs.keys()].sort((a, b) => a.split('/').length - b.split('/').length)) mkdirSync(path.join(o.tree, d), { recursive: true, mode: 0o755 });
  return dirs;
}

/** Contents grouped into ranged GETs: by object, in offset order, neighbours merged while the range stays small. */
function planRanges(m: ManifestV2, needs: Need[]): Range[] {
  const byObject = new Map<number, Need[]>();
  for (const n of needs) byObject.set(n.blob.object, [...(byObject.get(n.blob.object) ?? []), n]);
  const ranges: Range[] = [];
  for (const [index, list] of byObject) {
    const object = m.content.objects[index]!;
    let cur: Range | undefined;
    for (const n of list.sort((a, b) => a.blob.offset - b.blob.offset)) {
      const end = n.blob.offset + n.blob.length - 1;
      if (cur && n.blob.offset - cur.end - 1 <= RANGE_GAP && end - cur.start + 1 <= RANGE_MAX && n.blob.length <= RANGE_MAX) {
        cur.end = Math.max(cur.end, end);
        cur.needs.push(n);
      } else ranges.push((cur = { object, start: n.blob.offset, end, needs: [n] }));
    }
  }
  // The largest first: a long stream started last would finish alone.
  return ranges.sort((a, b) => b.end - b.start - (a.end - a.start));
}

async function getRange(o: BuildOptions, key: string, r: Range): Promise<Readable> {
  try {
    return await o.store!.getRange(key, r.start, r.end);
  } catch (err) {
    throw missing(err, o, r.object.name);
  }
}

function missing(err: unknown, o: BuildOptions, name: string): unknown {
  if (err instanceof KilnError && err.code === 'KILN_RELEASE_NOT_FOUND') {
    const m = o.verified.manifest;
    return new KilnError('KILN_OBJECT_MISSING', `the bucket has no content object ${name}, which ${m.app} ${m.version} needs (pruned, or its push did not finish): push the release again under a new version`, { cause: err });
  }
  return err;
}

/** One ranged GET read whole: exactly its length, or a transient error (retried). */
async function readRange(o: BuildOptions, key: string, r: Range): Promise<Buffer> {
  const length = r.end - r.start + 1;
  const body = await getRange(o, key, r);
  const meter = artifactMeter(length, o.idleTimeoutMs, `content object ${r.object.name}`, false);
  const chunks: Buffer[] = [];
  await pipeline(
    body,
    meter.stream,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        chunks.push(chunk);
        cb();
      },
    }),
  ).catch((err: unknown) => {
    throw s3Error(err, r.object.name);
  });
  const bytes = Buffer.concat(chunks);
  if (bytes.length !== length) throw new KilnError('KILN_S3_UNREACHABLE', `the download of ${r.object.name} ended after ${bytes.length} of ${length} bytes`);
  return bytes;
}

/** A stored content back to the file it is, capped at its declared size and checked against its sha256. */
async function decode(need: Need, stored: Buffer, object: string): Promise<Buffer> {
  let data = stored;
  if (need.blob.encoding === 'gzip') {
    try {
      data = await gunzipAsync(stored, { maxOutputLength: Math.max(1, need.size) });
    } catch (err) {
      if (err instanceof RangeError) throw new KilnError('KILN_OBJECT_CORRUPT', `content ${need.sha.slice(0, 12)}… in ${object} expands past the ${need.size} bytes of ${need.files[0]!.path}: refused (a bomb, or an index that points elsewhere)`);
      throw new KilnError('KILN_OBJECT_CORRUPT', `content ${need.sha.slice(0, 12)}… in ${object} does not decompress (${(err as Error).message}): the object was altered, or the index points elsewhere`, { cause: err });
    }
  }
  checkContent(need, data.length, createHash('sha256').update(data).digest('hex'), object);
  return data;
}

function checkContent(need: Need, size: number, sha: string, object: string): void {
  if (size !== need.size || sha !== need.sha) {
    throw new KilnError('KILN_OBJECT_DIGEST', `content for ${need.files[0]!.path} in ${object} is ${size} bytes with sha256 ${sha.slice(0, 12)}…, but the signed manifest says ${need.size} bytes, ${need.sha.slice(0, 12)}…: refused (altered object, or an index that lies)`);
  }
}

/** A large content streamed to its first path (hashed as it is written, checked at the end), then copied to any others. */
async function streamOne(o: BuildOptions, key: string, r: Range, written: ExtractedFile[], paths: string[], progress: (n: number) => void): Promise<void> {
  const need = r.needs[0]!;
  const [first, ...others] = need.files;
  const dest = path.join(o.tree, first!.path);
  const body = await getRange(o, key, r);
  const meter = artifactMeter(need.blob.length, o.idleTimeoutMs, `content object ${r.object.name}`, false);
  const hash = createHash('sha256');
  const fd = openSync(dest, 'wx', 0o600);
  let size = 0;
  try {
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        size += chunk.length;
        if (size > need.size) return cb(new KilnError('KILN_OBJECT_CORRUPT', `content ${need.sha.slice(0, 12)}… in ${r.object.name} expands past the ${need.size} bytes of ${first!.path}: refused`));
        hash.update(chunk);
        for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off);
        progress(chunk.length);
        cb();
      },
    });
    const stages: Array<NodeJS.ReadableStream | NodeJS.WritableStream | Transform> = [body, meter.stream];
    if (need.blob.encoding === 'gzip') stages.push(createGunzip({ chunkSize: 1024 * 1024 }));
    try {
      await pipeline([...stages, sink] as unknown as [Readable, Writable]);
    } catch (err) {
      if (err instanceof KilnError) throw err;
      if ((err as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new KilnError('KILN_OBJECT_CORRUPT', `content object ${r.object.name} does not decompress (${(err as Error).message})`, { cause: err });
      throw s3Error(err, r.object.name);
    }
    checkContent(need, size, hash.digest('hex'), r.object.name);
    finishFd(o, fd, first!);
    written.push({ path: first!.path, sha256: need.sha, stamp: fileStamp(fstatSync(fd)) });
    paths.push(dest);
  } finally {
    closeSync(fd);
  }
  for (const f of others) {
    const to = path.join(o.tree, f.path);
    await copyFile(dest, to, fsc.COPYFILE_EXCL | fsc.COPYFILE_FICLONE);
    finish(o, to, f);
    written.push({ path: f.path, sha256: need.sha, stamp: fileStamp(lstatSync(to)) });
    paths.push(to);
    progress(f.size);
  }
}

/**
 * Hard-links a file from another release when that is safe: the app cannot write release files (so no
 * release can change another's through the shared inode), the file is ours, not writable by group or
 * others, and already has the mode wanted (a link shares it). False: copy instead.
 */
async function tryLink(o: BuildOptions, from: string, dest: string, f: FileOf): Promise<boolean> {
  if (!o.share || o.owner || f.mode & 0o022) return false;
  const st = lstatSync(from);
  if ((st.mode & 0o7777) !== f.mode || st.uid !== process.getuid?.()) return false;
  try {
    await link(from, dest);
    return true;
  } catch (err) {
    if (hasErrno(err, 'EXDEV', 'EMLINK', 'EPERM')) return false;
    throw err;
  }
}

function finish(o: BuildOptions, file: string, f: FileOf): void {
  if (o.owner) chownSync(file, o.owner.uid, o.owner.gid);
  chmodSync(file, f.mode);
}

function finishFd(o: BuildOptions, fd: number, f: FileOf): void {
  if (o.owner) fchownSync(fd, o.owner.uid, o.owner.gid);
  fchmodSync(fd, f.mode);
}

