import { execFile } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { chmodSync, chownSync, close, closeSync, fchmodSync, fchownSync, fdatasync, fstatSync, lchownSync, mkdirSync, open, openSync, symlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { KilnError, asKilnError } from '../errors/kiln-error.js';
import { hasErrno } from '../system/fs-errors.js';
import type { FileEntry } from './release-schema.js';
import { checkLinkInside, fileStamp } from './scan-tree.js';

export interface ExtractLimits {
  maxEntries: number;
  /** decompressed bytes */
  maxBytes: number;
  maxDepth: number;
}

export const DEFAULT_LIMITS: ExtractLimits = { maxEntries: 50_000, maxBytes: 4 * 1024 ** 3, maxDepth: 32 };

export interface ExtractOptions {
  /** an existing, empty directory */
  dest: string;
  limits: ExtractLimits;
  /** when given, every entry must be in it with the same type and size, and every file must match its digest */
  expected?: { files: FileEntry[]; allowLinks: boolean };
  /** without `expected`: whether symbolic links (inside the tree) are accepted */
  allowLinks?: boolean;
  /** accept entries owned by anyone (a user's own tarball at push time, repacked owner-less) */
  ignoreOwners?: boolean;
  /** files are given to this owner (as root: the service user); otherwise they belong to the process */
  owner?: { uid: number; gid: number };
  /** flush every file and directory to disk before returning */
  fsync: boolean;
  /** called with the decompressed byte count as it grows */
  onProgress?: (bytes: number) => void;
}

export interface ExtractResult {
  entries: number;
  bytes: number;
  /** with `expected`: every file written, its digest (checked against the manifest) and its stamp once complete */
  files: ExtractedFile[];
}

export interface ExtractedFile {
  path: string;
  sha256: string;
  /** fileStamp() of the file as written: while it keeps this stamp, it still has this digest */
  stamp: string;
}

const FILE_TYPES = new Set(['File', 'OldFile', 'ContiguousFile']);

/** Splits and checks an entry path: relative, no "." or ".." or empty segment, not too deep. */
export function checkEntryPath(raw: string, maxDepth: number): string {
  let p = raw;
  while (p.startsWith('./')) p = p.slice(2);
  if (p.endsWith('/')) p = p.slice(0, -1);
  const shown = JSON.stringify(raw.length > 120 ? `${raw.slice(0, 120)}…` : raw);
  if (p === '' || p === '.') throw new KilnError('KILN_TAR_PATH', `tar entry ${shown} has an empty name`);
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) throw new KilnError('KILN_TAR_PATH', `tar entry ${shown} has an absolute path`);
  if (p.includes('\\') || p.includes('\0')) throw new KilnError('KILN_TAR_PATH', `tar entry ${shown} has a backslash or NUL in its name`);
  const parts = p.split('/');
  if (parts.length > maxDepth) throw new KilnError('KILN_TAR_DEPTH', `tar entry ${shown} is ${parts.length} levels deep, over the limit of ${maxDepth}`);
  for (const part of parts) {
    if (part === '..') throw new KilnError('KILN_TAR_PATH', `tar entry ${shown} has a ".." segment`);
    if (part === '' || part === '.') throw new KilnError('KILN_TAR_PATH', `tar entry ${shown} has an empty or "." segment`);
  }
  return p;
}

/** The decompressed size a tar of these entries can reach: data blocks plus generous header room. */
export function tarSizeBound(files: FileEntry[]): number {
  let bound = 20 * 512;
  for (const f of files) bound += 3 * 512 + Math.ceil(f.path.length / 512) * 512 + (f.type === 'file' ? Math.ceil(f.size / 512) * 512 : 0);
  return bound;
}

function byteCap(cap: number, onProgress?: (n: number) => void): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      if (seen > cap) return cb(new KilnError('KILN_TAR_TOO_LARGE', `the archive expands past ${cap} bytes, its declared or allowed size: refused (gzip bomb?)`));
      onProgress?.(seen);
      cb(null, chunk);
    },
  });
}

/**
 * Streams a .tar.gz into `dest`, refusing anything unsafe as it arrives (never after the fact).
 * On failure the caller removes `dest`; nothing outside it is ever written.
 */
export async function extractTarGz(source: Readable, opts: ExtractOptions): Promise<ExtractResult> {
  const { dest, limits } = opts;
  const expected = opts.expected ? new Map(opts.expected.files.map((f) => [f.path, f])) : undefined;
  const allowLinks = opts.expected ? opts.expected.allowLinks : (opts.allowLinks ?? false);
  const cap = Math.min(limits.maxBytes, opts.expected ? tarSizeBound(opts.expected.files) : Infinity);
  const seen = new Set<string>();
  const links = new Set<string>();
  /** directories earlier entries were put in (made on the fly, without an entry of their own) */
  const parents = new Set<string>();
  /** directory entries and their modes, applied at the end */
  const dirs = new Map<string, number>();
  const madeDirs = new Set<string>();
  const files: string[] = [];
  const written: ExtractedFile[] = [];
  let current: OpenFile | undefined;
  let entries = 0;
  let declaredBytes = 0;
  let failure: KilnError | undefined;
  let sawEnd = false;

  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (failure) return cb(failure);
      // Past the end-of-archive blocks node-tar keeps every byte, re-concatenating its buffer on each
      // write (quadratic: 64 MiB of trailing zeros took 26 s). Drop them: the byte cap still counts them.
      if (sawEnd) return cb();
      if (parser.write(chunk)) cb();
      else parser.once('drain', () => cb(failure));
    },
    final(cb) {
      parser.once('end', () => cb(failure));
      parser.end();
    },
  });
  const fail = (err: unknown) => {
    if (failure) return;
    failure = asKilnError(err, 'KILN_TAR_CORRUPT');
    if (current) closeQuietly(current.fd);
    current = undefined;
    sink.destroy(failure);
  };
  const parser = new Parser({ strict: true, onReadEntry: (entry) => onEntry(entry) });
  parser.on('eof', () => (sawEnd = true));
  parser.on('error', (err: Error) => fail(new KilnError('KILN_TAR_CORRUPT', `the artifact is not a valid tar archive: ${err.message}`, { cause: err })));

  // The file system work is synchronous, on this thread, like tar's: writes land in the page cache in
  // microseconds, and the thread pool stays free for gunzip. The flush to disk comes once, at the end.
  const ensureDir = (rel: string) => {
    if (rel === '.' || madeDirs.has(rel)) return;
    mkdirSync(path.join(dest, rel), { recursive: true, mode: 0o755 });
    for (let p = rel; p !== '.' && !madeDirs.has(p); p = path.posix.dirname(p)) madeDirs.add(p);
  };

  function onEntry(entry: ReadEntry): void {
    if (failure) return void entry.resume();
    try {
      checkEntry(entry);
    } catch (err) {
      entry.resume();
      fail(err);
    }
  }

  function checkEntry(entry: ReadEntry): void {
    if (++entries > limits.maxEntries) throw new KilnError('KILN_TAR_TOO_MANY', `the archive has more than ${limits.maxEntries} entries`);
    const type = entry.type;
    // `tar -C dir .` starts with the top directory itself: nothing to create.
    if (type === 'Directory' && /^(\.\/?)+$/.test(entry.path)) return void entry.resume();
    const rel = checkEntryPath(entry.path, limits.maxDepth);
    if (type === 'Link') throw new KilnError('KILN_TAR_LINK', `tar entry ${rel} is a hard link (to ${entry.linkpath}): releases carry no hard links`);
    const kind = FILE_TYPES.has(type) ? 'file' : type === 'Directory' ? 'dir' : type === 'SymbolicLink' ? 'symlink' : undefined;
    if (!kind) throw new KilnError('KILN_TAR_SPECIAL', `tar entry ${rel} is a ${type} entry: releases carry only files, directories and links`);
    if ((entry.mode ?? 0) & 0o6000) throw new KilnError('KILN_TAR_SETUID', `tar entry ${rel} has a setuid or setgid bit`);
    if ((entry.uid || entry.gid) && !opts.ignoreOwners) throw new KilnError('KILN_TAR_OWNER', `tar entry ${rel} is owned by uid ${entry.uid}, gid ${entry.gid}: kiln artifacts carry no owners (files belong to the service user)`);
    for (let i = rel.indexOf('/'); i !== -1; i = rel.indexOf('/', i + 1)) {
      if (links.has(rel.slice(0, i))) throw new KilnError('KILN_TAR_LINK', `tar entry ${rel} lies behind the link ${rel.slice(0, i)}`);
      parents.add(rel.slice(0, i));
    }
    if (seen.has(rel)) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${rel} appears twice`);
    seen.add(rel);
    const want = expected?.get(rel);
    if (expected && !want) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${rel} is not in the manifest`);
    if (want && want.type !== kind) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${rel} is a ${kind} but the manifest says ${want.type}`);
    const abs = path.join(dest, rel);
    const parent = path.posix.dirname(rel);

    if (kind === 'dir') {
      dirs.set(rel, want?.type === 'dir' ? want.mode : (entry.mode ?? 0o755) & 0o777);
      ensureDir(rel);
      return void entry.resume();
    }
    if (kind === 'symlink') {
      const target = entry.linkpath ?? '';
      if (!allowLinks) throw new KilnError('KILN_TAR_LINK', `tar entry ${rel} is a symbolic link and this release does not allow links`);
      checkLinkInside(rel, target);
      // A link at a path earlier entries used as their directory would redirect them.
      if (parents.has(rel)) throw new KilnError('KILN_TAR_LINK', `tar entry ${rel} is a link, but earlier entries lie in a directory of that name`);
      if (want?.type === 'symlink' && want.target !== target) throw new KilnError('KILN_TAR_MISMATCH', `link ${rel} points to ${target} but the manifest says ${want.target}`);
      links.add(rel);
      ensureDir(parent);
      symlinkSync(target, abs);
      if (opts.owner) lchownSync(abs, opts.owner.uid, opts.owner.gid);
      return void entry.resume();
    }
    const size = entry.size ?? 0;
    if (want?.type === 'file' && want.size !== size) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${rel} is ${size} bytes but the manifest says ${want.size}`);
    declaredBytes += size;
    if (declaredBytes > limits.maxBytes) throw new KilnError('KILN_TAR_TOO_LARGE', `the archive declares more than ${limits.maxBytes} bytes of files`);
    ensureDir(parent);
    // O_EXCL: never through an existing file or link
    const file: OpenFile = {
      fd: openSync(abs, 'wx', 0o600),
      rel,
      size,
      written: 0,
      mode: want?.type === 'file' ? want.mode : (entry.mode ?? 0o644) & 0o777,
      sha256: want?.type === 'file' ? want.sha256 : undefined,
      hash: want?.type === 'file' ? createHash('sha256') : undefined,
    };
    current = file;
    files.push(abs);
    entry.on('data', (chunk: Buffer) => {
      if (failure) return;
      try {
        writeChunk(file, chunk);
      } catch (err) {
        fail(err);
      }
    });
    entry.on('end', () => {
      if (failure) return;
      try {
        finishFile(file);
        current = undefined;
      } catch (err) {
        fail(err);
      }
    });
  }

  function finishFile(f: OpenFile): void {
    if (f.written !== f.size) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${f.rel} ended after ${f.written} of ${f.size} bytes`);
    const digest = f.hash?.digest('hex');
    if (f.sha256 && digest !== f.sha256) throw new KilnError('KILN_TAR_MISMATCH', `${f.rel} has sha256 ${digest} but the manifest says ${f.sha256}`);
    if (opts.owner) fchownSync(f.fd, opts.owner.uid, opts.owner.gid);
    fchmodSync(f.fd, f.mode);
    // Stamped after the last change to the file's metadata, so a tree check can trust this digest
    // instead of reading the file again.
    if (f.sha256) written.push({ path: f.rel, sha256: f.sha256, stamp: fileStamp(fstatSync(f.fd)) });
    closeSync(f.fd);
  }

  try {
    // Large chunks and read-ahead let gunzip (on the thread pool) run while this thread creates files.
    // (zlib streams take the Transform options too; @types/node's ZlibOptions does not list them)
    const gunzip = createGunzip({ chunkSize: 1024 * 1024, ...({ readableHighWaterMark: 8 * 1024 * 1024 } as object) });
    await pipeline(source, gunzip, byteCap(cap, opts.onProgress), sink);
    if (failure) throw failure;
  } catch (err) {
    if (current) closeQuietly(current.fd);
    throw failure ?? (err instanceof KilnError ? err : new KilnError('KILN_TAR_CORRUPT', `the artifact is not a valid .tar.gz: ${(err as Error).message}`, { cause: err }));
  }

  if (expected) {
    const missing = [...expected.keys()].filter((p) => !seen.has(p));
    if (missing.length) throw new KilnError('KILN_TAR_MISMATCH', `the archive lacks ${missing.length} manifest entries, first: ${missing.slice(0, 3).join(', ')}`);
  }
  // Directory modes last, deepest first, so a read-only directory never blocks its own contents.
  const dirList = [...dirs.keys()].sort((a, b) => b.split('/').length - a.split('/').length);
  for (const d of dirList) {
    const abs = path.join(dest, d);
    if (opts.owner) chownSync(abs, opts.owner.uid, opts.owner.gid);
    chmodSync(abs, dirs.get(d)!);
  }
  if (opts.fsync) await flushToDisk(dest, [...files, dest, ...[...madeDirs].map((d) => path.join(dest, d))]);
  return { entries, bytes: declaredBytes, files: written };
}

interface OpenFile {
  fd: number;
  rel: string;
  size: number;
  written: number;
  mode: number;
  sha256: string | undefined;
  hash: Hash | undefined;
}

function writeChunk(f: OpenFile, chunk: Buffer): void {
  f.written += chunk.length;
  if (f.written > f.size) throw new KilnError('KILN_TAR_MISMATCH', `tar entry ${f.rel} holds more than its ${f.size} bytes`);
  f.hash?.update(chunk);
  for (let off = 0; off < chunk.length; ) off += writeSync(f.fd, chunk, off);
}

/**
 * Closes the file being written when the extraction has failed already: that failure is the one to
 * report, and the tree is removed. close(2) can fail only with these; anything else is a bug.
 */
function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch (err) {
    if (!hasErrno(err, 'EBADF', 'EINTR', 'EIO', 'ENOSPC', 'EDQUOT')) throw err;
  }
}

/**
 * Up to this many files and directories, the tree is flushed with one fdatasync each, on the thread
 * pool; past it, with one syncfs(2) of its file system.
 */
export const FSYNC_EACH_MAX = 256;

/**
 * Flushes the extracted tree to disk. A small tree (a release of a few dozen files) is fsynced file
 * by file: that flushes only its own data, and it costs less than starting a child process, which
 * in a process holding many agents took ~20 ms of its event loop per install (fork of a large
 * process). A large tree gets one syncfs(2) of its file system instead (coreutils `sync -f`; Node
 * has no binding), which costs a fraction of fsync-ing thousands of files one by one, each waiting
 * for its own journal commit. Where that command is missing, every file and directory is fsynced.
 */
export async function flushToDisk(dest: string, paths: string[]): Promise<void> {
  if (paths.length <= FSYNC_EACH_MAX) return fsyncAll(paths);
  const synced = await new Promise<boolean>((resolve) => {
    execFile('sync', ['-f', dest], (err) => resolve(!err));
  });
  if (!synced) await fsyncAll(paths);
}

const call = <T>(fn: (cb: (err: NodeJS.ErrnoException | null, value?: T) => void) => void) =>
  new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value as T))));

/** Flushes files and directories to disk, several at a time on the thread pool (fs callbacks: no FileHandle per path). */
async function fsyncAll(paths: string[], concurrency = 16): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, paths.length) }, async () => {
      while (next < paths.length) {
        const fd = await call<number>((cb) => open(paths[next++]!, 'r', cb));
        try {
          await call<void>((cb) => fdatasync(fd, cb));
        } finally {
          await call<void>((cb) => close(fd, cb));
        }
      }
    }),
  );
}
