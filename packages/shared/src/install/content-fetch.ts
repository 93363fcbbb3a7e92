import { createHash, webcrypto } from 'node:crypto';
import { chmodSync, chownSync, closeSync, constants as fsc, fchmodSync, fchownSync, fstatSync, lstatSync, openSync, writeSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGunzip, gunzip } from 'node:zlib';
import { KilnError } from '../errors/kiln-error.js';
import type { Blob, ManifestV2 } from '../release/release-schema.js';
import type { ExtractedFile } from '../release/safe-extract.js';
import { fileStamp } from '../release/scan-tree.js';
import { s3Error } from '../s3/s3-errors.js';
import { artifactMeter } from './artifact-meter.js';
import type { VerifiedManifest } from '../release/release-resolve.js';
import type { FileEntry } from '../release/release-schema.js';
import type { ReleaseStore } from '../release/release-store.js';

// The bucket side of a format 2 install: which ranged GETs fetch the contents a host lacks, and each
// content read, decompressed, capped and checked against the signed manifest before it is written.

const gunzipAsync = promisify(gunzip);

/** Needed contents closer than this in one object are fetched by one ranged GET (the gap is read and dropped). */
const RANGE_GAP = 64 * 1024;
/** A ranged GET is read whole into memory up to this; a content larger than this streams on its own. */
export const RANGE_MAX = 4 * 1024 * 1024;

/** Where contents come from and where they go. */
export interface ContentSource {
  store: ReleaseStore | undefined;
  verified: VerifiedManifest & { manifest: ManifestV2 };
  /** the directory the tree is built in */
  tree: string;
  owner?: { uid: number; gid: number } | undefined;
  /** a download with no byte for this long is a stall */
  idleTimeoutMs: number;
}

export type FileOf = Extract<FileEntry, { type: 'file' }>;
export interface Need {
  sha: string;
  size: number;
  blob: Blob;
  files: FileOf[];
}
export interface Range {
  object: { name: string; size: number };
  start: number;
  end: number;
  needs: Need[];
}

/** Contents grouped into ranged GETs: by object, in offset order, neighbours merged while the range stays small. */
export function planRanges(m: ManifestV2, needs: Need[]): Range[] {
  const byObject = new Map<number, Need[]>();
  for (const n of needs) {
    const list = byObject.get(n.blob.object);
    if (list) list.push(n);
    else byObject.set(n.blob.object, [n]);
  }
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

/** A ranged GET; an object shorter than the manifest says (cut, or replaced) is refused at once, not retried. */
async function getRange(o: ContentSource, key: string, r: Range): Promise<Readable> {
  let res;
  try {
    res = await o.store!.getRange(key, r.start, r.end);
  } catch (err) {
    throw missing(err, o, r.object.name);
  }
  if (res.length !== undefined && res.length !== r.end - r.start + 1) {
    res.body.destroy();
    throw new KilnError('KILN_OBJECT_CORRUPT', `content object ${r.object.name} is shorter than the ${r.object.size} bytes the manifest says (${res.length} of bytes ${r.start}-${r.end} sent): altered or cut`);
  }
  return res.body;
}

function missing(err: unknown, o: ContentSource, name: string): unknown {
  if (err instanceof KilnError && err.code === 'KILN_RELEASE_NOT_FOUND') {
    const m = o.verified.manifest;
    return new KilnError('KILN_OBJECT_MISSING', `the bucket has no content object ${name}, which ${m.app} ${m.version} needs (pruned, or its push did not finish): push the release again under a new version`, { cause: err });
  }
  // 416: the range starts past the object's end
  if (err instanceof KilnError && (err.cause as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode === 416) {
    return new KilnError('KILN_OBJECT_CORRUPT', `content object ${name} is shorter than the manifest says: altered or cut`, { cause: err });
  }
  return err;
}

/** One ranged GET read whole: exactly its length, or a transient error (retried). */
export async function readRange(o: ContentSource, key: string, r: Range): Promise<Buffer> {
  const length = r.end - r.start + 1;
  const body = await getRange(o, key, r);
  const meter = artifactMeter(length, o.idleTimeoutMs, `content object ${r.object.name}`, false);
  // Filled in place: chunks gathered and concatenated would hold every range twice at the end.
  const bytes = Buffer.allocUnsafe(length);
  let at = 0;
  await pipeline(
    body,
    meter.stream,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        at += chunk.copy(bytes, at);
        cb();
      },
    }),
  ).catch((err: unknown) => {
    throw s3Error(err, r.object.name);
  });
  if (at !== length) throw new KilnError('KILN_S3_UNREACHABLE', `the download of ${r.object.name} ended after ${at} of ${length} bytes`);
  return bytes;
}

/** A stored content back to the file it is, capped at its declared size and checked against its sha256. */
export async function decode(need: Need, stored: Buffer, object: string): Promise<Buffer> {
  let data = stored;
  if (need.blob.encoding === 'gzip') {
    try {
      data = await gunzipAsync(stored, { maxOutputLength: Math.max(1, need.size) });
    } catch (err) {
      if (err instanceof RangeError) throw new KilnError('KILN_OBJECT_CORRUPT', `content ${need.sha.slice(0, 12)}… in ${object} expands past the ${need.size} bytes of ${need.files[0]!.path}: refused (a bomb, or an index that points elsewhere)`);
      throw new KilnError('KILN_OBJECT_CORRUPT', `content ${need.sha.slice(0, 12)}… in ${object} does not decompress (${(err as Error).message}): the object was altered, or the index points elsewhere`, { cause: err });
    }
  }
  // WebCrypto digests on the thread pool: the main thread, which writes every file, does not hash them too.
  checkContent(need, data.length, Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex'), object);
  return data;
}

function checkContent(need: Need, size: number, sha: string, object: string): void {
  if (size !== need.size || sha !== need.sha) {
    throw new KilnError('KILN_OBJECT_DIGEST', `content for ${need.files[0]!.path} in ${object} is ${size} bytes with sha256 ${sha.slice(0, 12)}…, but the signed manifest says ${need.size} bytes, ${need.sha.slice(0, 12)}…: refused (altered object, or an index that lies)`);
  }
}

/** A large content streamed to its first path (hashed as it is written, checked at the end), then copied to any others. */
export async function streamOne(o: ContentSource, key: string, r: Range, written: ExtractedFile[], paths: string[], progress: (n: number) => void): Promise<void> {
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

export function finish(o: ContentSource, file: string, f: FileOf): void {
  if (o.owner) chownSync(file, o.owner.uid, o.owner.gid);
  chmodSync(file, f.mode);
}

export function finishFd(o: ContentSource, fd: number, f: FileOf): void {
  if (o.owner) fchownSync(fd, o.owner.uid, o.owner.gid);
  fchmodSync(fd, f.mode);
}

