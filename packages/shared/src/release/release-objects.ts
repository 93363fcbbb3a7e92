import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip, gzip } from 'node:zlib';
import type { Blob, FileEntry, ManifestV2 } from './release-schema.js';
import type { ReleaseStore } from './release-store.js';
import { runPool } from '../system/run-pool.js';

const gzipAsync = promisify(gzip);

/** Files this size or larger are stored alone (streamed at install); smaller ones go into packs. */
export const LARGE_FILE = 1024 * 1024;
/** A pack is closed once its stored bytes reach this. */
export const PACK_TARGET = 8 * 1024 * 1024;
/** Stored compressed only when that saves at least this fraction: gzip of random bytes costs CPU twice for nothing. */
const MIN_SAVING = 0.05;

/** A file content the bucket already holds: the object and the bytes of it. */
export interface KnownBlob {
  object: { name: string; size: number };
  blob: Omit<Blob, 'object'>;
}

export interface StoreContentResult {
  content: Omit<ManifestV2['content'], 'treeSha256'>;
  uploadedBytes: number;
  uploadedObjects: number;
  /** stored bytes of the release's contents the bucket already held */
  skippedBytes: number;
}

/** The contents earlier format 2 manifests stored, newest first wins: what a push need not upload again. */
export function knownBlobs(manifests: ManifestV2[]): Map<string, KnownBlob> {
  const known = new Map<string, KnownBlob>();
  for (const m of [...manifests].sort((a, b) => b.seq - a.seq)) {
    for (const [sha, b] of Object.entries(m.content.blobs)) {
      const object = m.content.objects[b.object];
      if (object && !known.has(sha)) known.set(sha, { object, blob: { offset: b.offset, length: b.length, encoding: b.encoding } });
    }
  }
  return known;
}

/**
 * Stores the tree's file contents for a format 2 release: each content once, by its sha256; what the
 * bucket holds already (`known`) is named, not uploaded. Small files are compressed one by one (so an
 * install can fetch any one with a ranged GET) into packs; large ones stand alone.
 */
export async function storeContent(args: { store: ReleaseStore; app: string; dir: string; files: FileEntry[]; known: Map<string, KnownBlob>; work: string; onUpload?: (bytes: number) => void }): Promise<StoreContentResult> {
  const { store, app, dir, known, work } = args;
  await mkdir(work, { recursive: true });
  const objects: Array<{ name: string; size: number }> = [];
  const objectIndex = new Map<string, number>();
  const blobs: Record<string, Blob> = {};
  const indexOf = (o: { name: string; size: number }) => {
    let i = objectIndex.get(o.name);
    if (i === undefined) objectIndex.set(o.name, (i = objects.push(o) - 1));
    return i;
  };
  let skippedBytes = 0;
  let uploadedBytes = 0;
  let uploadedObjects = 0;
  const small: Array<{ sha: string; file: string }> = [];
  const large: Array<{ sha: string; file: string; size: number }> = [];
  const seen = new Set<string>();
  for (const f of args.files) {
    if (f.type !== 'file' || seen.has(f.sha256)) continue;
    seen.add(f.sha256);
    const had = known.get(f.sha256);
    if (had) {
      blobs[f.sha256] = { object: indexOf(had.object), ...had.blob };
      skippedBytes += had.blob.length;
    } else if (f.size >= LARGE_FILE) large.push({ sha: f.sha256, file: path.join(dir, f.path), size: f.size });
    else small.push({ sha: f.sha256, file: path.join(dir, f.path) });
  }

  // Objects are written to `work` as they are made, then uploaded a few at a time.
  const queued: Array<{ name: string; file: string; size: number }> = [];
  const upload = (name: string, file: string, size: number) => queued.push({ name, file, size });

  // Small contents, compressed several at once (zlib runs on the thread pool), packed in manifest order.
  let pack: Array<{ sha: string; bytes: Buffer; encoding: Blob['encoding'] }> = [];
  let packBytes = 0;
  const closePack = async () => {
    if (!pack.length) return;
    const body = Buffer.concat(pack.map((m) => m.bytes));
    const name = `pack-${createHash('sha256').update(body).digest('hex')}`;
    const file = path.join(work, name);
    await writeFile(file, body, { mode: 0o600 });
    const index = indexOf({ name, size: body.length });
    let offset = 0;
    for (const m of pack) {
      blobs[m.sha] = { object: index, offset, length: m.bytes.length, encoding: m.encoding };
      offset += m.bytes.length;
    }
    upload(name, file, body.length);
    pack = [];
    packBytes = 0;
  };
  for (let i = 0; i < small.length; i += 32) {
    const batch = await Promise.all(
      small.slice(i, i + 32).map(async ({ sha, file }) => {
        const raw = await readFile(file);
        const gz = await gzipAsync(raw, { level: 6 });
        return gz.length <= raw.length * (1 - MIN_SAVING) ? { sha, bytes: gz, encoding: 'gzip' as const } : { sha, bytes: raw, encoding: 'none' as const };
      }),
    );
    for (const m of batch) {
      pack.push(m);
      packBytes += m.bytes.length;
      if (packBytes >= PACK_TARGET) await closePack();
    }
  }
  await closePack();

  // Large contents alone, under their sha256; compressed when a sample of them compresses.
  for (const l of large) {
    const encoding = (await compresses(l.file)) ? 'gzip' : 'none';
    let file = l.file;
    let size = l.size;
    if (encoding === 'gzip') {
      file = path.join(work, l.sha);
      await pipeline(createReadStream(l.file), createGzip({ level: 6 }), createWriteStream(file, { mode: 0o600 }));
      size = (await stat(file)).size;
    }
    blobs[l.sha] = { object: indexOf({ name: l.sha, size }), offset: 0, length: size, encoding };
    upload(l.sha, file, size);
  }
  await runPool(queued, 4, async (job) => {
    await store.putObject(store.objectKey(app, job.name), job.file, job.size);
    if (job.file.startsWith(work)) await rm(job.file, { force: true });
    uploadedBytes += job.size;
    uploadedObjects++;
    args.onUpload?.(uploadedBytes);
  });
  return { content: { objects, blobs }, uploadedBytes, uploadedObjects, skippedBytes };
}

/** Whether the file's first MiB compresses by MIN_SAVING (the same content always gives the same answer). */
async function compresses(file: string): Promise<boolean> {
  const fh = await open(file);
  try {
    const head = Buffer.alloc(LARGE_FILE);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const gz = await gzipAsync(head.subarray(0, bytesRead), { level: 6 });
    return gz.length <= bytesRead * (1 - MIN_SAVING);
  } finally {
    await fh.close();
  }
}
