import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { fileStamp, ifMissing, sha256File, type ExtractedFile, type FileEntry, type TreeCheck } from '@kiln/shared';

/**
 * Digests of files already hashed, keyed by what changes whenever content can have changed
 * (inode, size, mtime and ctime: ctime can't be set back by a user), so a periodic check
 * re-reads only files that were touched.
 */
export type DigestCache = Map<string, { stamp: string; sha256: string }>;

const MAX_PATHS = 10;

/** Files an install just wrote and checked: their digests hold while their stamps do, so the tree check after it reads none. */
export function rememberDigests(cache: DigestCache, files: ExtractedFile[]): void {
  for (const f of files) cache.set(f.path, { stamp: f.stamp, sha256: f.sha256 });
}

/**
 * Compares the installed tree with the manifest's entries: type, mode, size, sha256, link target.
 * The links of persistent directories (`persist`) are the install's, not the release's: not looked at.
 */
export async function checkTree(releaseDir: string, files: FileEntry[], cache: DigestCache, now: Date, persist: string[] = []): Promise<TreeCheck> {
  const expected = new Map(files.map((f) => [f.path, f]));
  const modified: string[] = [];
  const missing: string[] = [];
  const extra: string[] = [];
  const seen = new Set<string>();

  async function walk(rel: string): Promise<void> {
    const names = await ifMissing(readdir(path.join(releaseDir, rel)), []);
    for (const name of names.sort()) {
      const p = rel ? `${rel}/${name}` : name;
      if (!rel && persist.includes(name)) continue;
      const want = expected.get(p);
      if (!want) {
        extra.push(p);
        continue;
      }
      seen.add(p);
      const abs = path.join(releaseDir, p);
      const st = await lstat(abs);
      if (want.type === 'dir') {
        if (!st.isDirectory() || (st.mode & 0o7777) !== want.mode) modified.push(p);
        if (st.isDirectory()) await walk(p);
      } else if (want.type === 'symlink') {
        if (!st.isSymbolicLink() || (await readlink(abs)) !== want.target) modified.push(p);
      } else if (!st.isFile() || (st.mode & 0o7777) !== want.mode || st.size !== want.size) {
        modified.push(p);
      } else {
        const stamp = fileStamp(st);
        let hit = cache.get(p);
        if (hit?.stamp !== stamp) {
          hit = { stamp, sha256: await sha256File(abs) };
          cache.set(p, hit);
        }
        if (hit.sha256 !== want.sha256) modified.push(p);
      }
    }
  }
  await walk('');
  for (const f of files) if (!seen.has(f.path)) missing.push(f.path);
  for (const key of cache.keys()) if (!expected.has(key)) cache.delete(key);

  const paths = [...modified.map((p) => `M ${p}`), ...missing.map((p) => `D ${p}`), ...extra.map((p) => `A ${p}`)].slice(0, MAX_PATHS);
  const clean = modified.length + missing.length + extra.length === 0;
  return { status: clean ? 'ok' : 'modified', modified: modified.length, missing: missing.length, extra: extra.length, paths, checkedAt: now.toISOString() };
}

export const UNCHECKED: TreeCheck = { status: 'unchecked', modified: 0, missing: 0, extra: 0, paths: [], checkedAt: null };
