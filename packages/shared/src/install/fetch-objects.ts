import { chmodSync, chownSync, closeSync, constants as fsc, fstatSync, lchownSync, linkSync, lstatSync, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs';
import { copyFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { KilnError, asKilnError } from '../errors/kiln-error.js';
import type { AppLayout } from '../release/install-layout.js';
import { flushToDisk, type ExtractLimits, type ExtractedFile } from '../release/safe-extract.js';
import { checkLinkInside, fileStamp, sha256File } from '../release/scan-tree.js';
import { TRANSIENT_S3_CODES } from '../s3/s3-errors.js';
import { backoffDelay } from '../system/backoff.js';
import { hasErrno } from '../system/fs-errors.js';
import { allSettledOrThrow, runPool } from '../system/run-pool.js';
import { checkLocalCopy, localContents, type LocalCopy } from './local-contents.js';
import { decode, finish, finishFd, planRanges, RANGE_MAX, readRange, streamOne, type ContentSource, type FileOf, type Need, type Range } from './content-fetch.js';

/** Ranged GETs in flight: enough to keep both the network and every core (zlib runs on the thread pool) busy. */
const IN_FLIGHT = 4;

export interface BuildOptions extends ContentSource {
  layout: AppLayout;
  limits: ExtractLimits;
  /** the app cannot write release files: a content with the same mode may be hard-linked from another release */
  share: boolean;
  fsync: boolean;
  attempts: number;
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
  for (const f of m.files) {
    if (f.type !== 'file') continue;
    const list = byContent.get(f.sha256);
    if (list) list.push(f);
    else byContent.set(f.sha256, [f]);
  }

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
      if (tryLink(o, copy.file, dest, f)) linked++;
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
          // Two at a time per range (four ranges in flight keep the thread pool's four threads busy):
          // every content decompressed at once would hold a range's whole expansion in memory.
          await runPool(r.needs, 2, async (need) => place(need, await decode(need, bytes.subarray(need.blob.offset - r.start, need.blob.offset - r.start + need.blob.length), r.object.name)));
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

/**
 * Hard-links a file from another release when that is safe: the app cannot write release files (so no
 * release can change another's through the shared inode), the file is ours, not writable by group or
 * others, and already has the mode wanted (a link shares it). False: copy instead.
 */
// Synchronous: a link is microseconds of kernel work, cheaper inline than a trip through the thread pool.
function tryLink(o: BuildOptions, from: string, dest: string, f: FileOf): boolean {
  if (!o.share || o.owner || f.mode & 0o022) return false;
  const st = lstatSync(from);
  if ((st.mode & 0o7777) !== f.mode || st.uid !== process.getuid?.()) return false;
  try {
    linkSync(from, dest);
    return true;
  } catch (err) {
    if (hasErrno(err, 'EXDEV', 'EMLINK', 'EPERM')) return false;
    throw err;
  }
}
