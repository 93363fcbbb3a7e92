import { lstatSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AppLayout } from '../release/install-layout.js';
import { FileStamps, readLocalManifest } from '../release/release-resolve.js';
import { peekJsonFile } from '../system/json-file.js';
import { Manifest } from '../release/release-schema.js';
import { fileStamp, sha256File } from '../release/scan-tree.js';
import { hasErrno, ifMissing } from '../system/fs-errors.js';
import { currentVersion, isComplete } from './install-recover.js';

/** A file of a complete release on this host, as its manifest and marker describe it. */
export interface LocalCopy {
  file: string;
  size: number;
  /** fileStamp() recorded when it was written; absent for releases installed before stamps were kept */
  stamp?: string | undefined;
}

/** Candidates per content: at most this many files are tried before the content is fetched. */
const MAX_CANDIDATES = 3;

/**
 * The file contents complete releases on this host hold, by sha256: `current`'s first (its stamps are
 * the freshest), then the others newest first. Only a suggestion: each is checked before use.
 */
export async function localContents(layout: AppLayout, except: string): Promise<Map<string, LocalCopy[]>> {
  const found = new Map<string, LocalCopy[]>();
  const cur = await currentVersion(layout);
  const names = (await ifMissing(readdir(layout.meta), [])).filter((n) => /^[A-Za-z0-9][A-Za-z0-9._+-]*\.json$/.test(n)).map((n) => n.slice(0, -5));
  const dated = await Promise.all(names.map(async (v) => ({ v, at: v === cur ? Infinity : ((await ifMissing(stat(layout.metaFile(v)), undefined))?.mtimeMs ?? 0) })));
  for (const { v } of dated.sort((a, b) => b.at - a.at)) {
    if (v === except || !(await isComplete(layout, v))) continue;
    const local = await readLocalManifest(layout.metaFile(v));
    const parsed = local && parseManifest(local.bytes);
    if (!parsed) continue;
    const stamps = (await peekJsonFile(layout.stampsFile(v), FileStamps)) ?? {};
    for (const f of parsed.files) {
      if (f.type !== 'file') continue;
      const list = found.get(f.sha256) ?? [];
      if (list.length >= MAX_CANDIDATES) continue;
      list.push({ file: path.join(layout.release(v), f.path), size: f.size, stamp: stamps[f.path] });
      found.set(f.sha256, list);
    }
  }
  return found;
}

/**
 * Whether a local file still holds `sha256`: a regular file of the right size whose stamp is the one
 * recorded when it was written (nothing can have changed it), or, failing that, whose content hashes
 * to it. Returns the stamp it was checked under, or undefined.
 */
export async function checkLocalCopy(c: LocalCopy, sha256: string): Promise<string | undefined> {
  // Synchronous: thousands of these in a hotfix, each microseconds; the thread pool is for the hashing.
  let st;
  try {
    st = lstatSync(c.file);
  } catch (err) {
    if (hasErrno(err, 'ENOENT', 'ENOTDIR')) return undefined;
    throw err;
  }
  if (!st?.isFile() || st.size !== c.size) return undefined;
  const stamp = fileStamp(st);
  if (c.stamp === stamp) return stamp;
  return (await sha256File(c.file)) === sha256 ? stamp : undefined;
}

/** A marker's manifest, or undefined when it does not parse (that release is then not a source). */
function parseManifest(bytes: Buffer): Manifest | undefined {
  try {
    const parsed = Manifest.safeParse(JSON.parse(bytes.toString('utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch (err) {
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}
