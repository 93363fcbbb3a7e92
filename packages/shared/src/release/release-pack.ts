import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { create } from 'tar';
import type { FileEntry } from './release-schema.js';

/** node-tar turns a file with several links into a hard-link entry; releases carry none, so it never remembers one. */
const noLinkCache = { get: () => undefined, set() {}, has: () => false } as unknown as Map<`${number}:${number}`, string>;

/**
 * Packs the scanned entries of `dir` into `outFile` (.tar.gz) in manifest order, owner-less
 * (portable), and returns the artifact's size and sha256.
 */
export async function packRelease(dir: string, entries: FileEntry[], outFile: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  const tarStream = create({ gzip: { level: 6 }, cwd: dir, portable: true, noDirRecurse: true, linkCache: noLinkCache }, entries.map((e) => e.path));
  await pipeline(tarStream, meter, createWriteStream(outFile, { mode: 0o600 }));
  return { size, sha256: hash.digest('hex') };
}
