import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../errors/kiln-error.js';
import type { FileEntry } from './release-schema.js';

export interface ScanOptions {
  allowLinks: boolean;
  /** relative paths (from the tree's top) to leave out, e.g. a state directory */
  ignore?: (rel: string) => boolean;
  /** hash at most this many files at once */
  concurrency?: number;
}

/**
 * What changes whenever a file's content can have changed: inode, size, mtime and ctime (ctime can't
 * be set back by a user). A digest taken under one stamp holds while the file keeps it.
 */
export const fileStamp = (st: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): string => `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file, { highWaterMark: 256 * 1024 }), hash);
  return hash.digest('hex');
}

/**
 * Lists an app tree as manifest entries (sorted, parents before children) with per-file digests.
 * Refuses what a release cannot carry: special files, setuid/setgid bits, links unless allowed,
 * links that leave the tree.
 */
export async function scanTree(top: string, opts: ScanOptions): Promise<FileEntry[]> {
  const entries: FileEntry[] = [];
  const pending: Array<{ rel: string; abs: string; size: number; mode: number; index: number }> = [];

  async function walk(relDir: string): Promise<void> {
    const names = (await readdir(path.join(top, relDir))).sort();
    for (const name of names) {
      const rel = relDir ? `${relDir}/${name}` : name;
      if (opts.ignore?.(rel)) continue;
      const abs = path.join(top, rel);
      const st = await lstat(abs);
      if (st.mode & 0o6000) throw new KilnError('KILN_PACK_INVALID', `${rel} has a setuid or setgid bit: kiln releases never carry one (chmod u-s,g-s it)`);
      if (st.isDirectory()) {
        entries.push({ path: rel, type: 'dir', mode: st.mode & 0o777 });
        await walk(rel);
      } else if (st.isFile()) {
        pending.push({ rel, abs, size: st.size, mode: st.mode & 0o777, index: entries.length });
        entries.push({ path: rel, type: 'file', size: st.size, mode: st.mode & 0o777, sha256: '' });
      } else if (st.isSymbolicLink()) {
        const target = await readlink(abs);
        if (!opts.allowLinks) throw new KilnError('KILN_PACK_INVALID', `${rel} is a symbolic link; set "allowLinks": true in kiln.json to ship links that stay inside the release`);
        checkLinkInside(rel, target);
        entries.push({ path: rel, type: 'symlink', target });
      } else {
        throw new KilnError('KILN_PACK_INVALID', `${rel} is a device, FIFO or socket: a release can carry only files, directories and links`);
      }
    }
  }
  await walk('');

  const concurrency = opts.concurrency ?? 8;
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < pending.length) {
        const job = pending[next++]!;
        const entry = entries[job.index] as Extract<FileEntry, { type: 'file' }>;
        entry.sha256 = await sha256File(job.abs);
      }
    }),
  );
  return entries;
}

/** Throws unless a link at `rel` pointing to `target` resolves inside the release (at pack and at install). */
export function checkLinkInside(rel: string, target: string): void {
  if (path.posix.isAbsolute(target)) throw new KilnError('KILN_TAR_LINK', `${rel} links to the absolute path ${target}: links must stay inside the release`);
  const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(rel), target));
  if (resolved === '..' || resolved.startsWith('../')) throw new KilnError('KILN_TAR_LINK', `${rel} links to ${target}, which leaves the release`);
  // "sub/l/.." is inside on paper but climbs out through sub/l when that is itself a link:
  // a target may climb only before it descends.
  const segs = target.split('/').filter((s) => s !== '' && s !== '.');
  const firstName = segs.findIndex((s) => s !== '..');
  if (firstName !== -1 && segs.indexOf('..', firstName) !== -1) {
    throw new KilnError('KILN_TAR_LINK', `${rel} links to ${target}, which climbs back up after going down: it could leave the release through another link`);
  }
}
