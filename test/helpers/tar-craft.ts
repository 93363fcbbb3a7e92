// Hand-made tar archives, byte by byte, for the extraction refusals: node-tar's Header encodes the
// 512-byte blocks; everything else (data, padding, end blocks, gzip) is assembled here.
import { Readable } from 'node:stream';
import { createGzip, gzipSync } from 'node:zlib';
import { Header, Pax, type HeaderData } from 'tar';

export interface CraftEntry extends HeaderData {
  /** the entry's data; `size` defaults to its length */
  data?: Buffer | string;
}

/** The end of an archive: two zero blocks. */
export const END = Buffer.alloc(1024);

const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);

/** The header block of one entry, preceded by a PAX header when the path does not fit ustar. */
export function headerOf(e: CraftEntry): Buffer {
  const data = e.data === undefined ? undefined : Buffer.from(e.data);
  const { data: _ignored, ...fields } = e;
  // Header.encode takes seconds to find a ustar split of a 20k-character path: give it a stand-in.
  const long = (e.path ?? '').length > 255;
  const h = new Header({ type: 'File', mode: 0o644, uid: 0, gid: 0, mtime: new Date(0), ...fields, ...(long ? { path: 'long-path' } : {}), size: e.size ?? data?.length ?? 0 });
  h.encode();
  if (!h.needPax && !long) return h.block!;
  return Buffer.concat([new Pax({ path: e.path, ...(e.linkpath ? { linkpath: e.linkpath } : {}) }).encode(), h.block!]);
}

/** Header, data and padding of one entry. */
export function entryBytes(e: CraftEntry): Buffer {
  const data = e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data);
  return Buffer.concat([headerOf(e), data, pad(data.length)]);
}

/** A whole .tar (entries + end blocks), in memory. */
export function tarOf(entries: CraftEntry[]): Buffer {
  return Buffer.concat([...entries.map(entryBytes), END]);
}

export function tarGz(entries: CraftEntry[]): Buffer {
  return gzipSync(tarOf(entries));
}

/** Gzips raw tar bytes as they are generated; destroying the result stops the generator. */
export function gzipStream(chunks: Iterable<Buffer> | AsyncIterable<Buffer>): Readable {
  const src = Readable.from(chunks, { objectMode: false, highWaterMark: 64 * 1024 });
  const gz = createGzip({ level: 1 });
  src.pipe(gz);
  gz.on('close', () => src.destroy());
  return gz;
}

let zeroMember: Buffer | undefined;

/**
 * Gzip members that decompress to `n` zero bytes (a multiple of 1 MiB): ~1 KiB per MiB, built in
 * milliseconds. A .tar.gz may be a series of gzip members (RFC 1952); gunzip reads them as one
 * stream, so `Buffer.concat([gzipSync(head), ...gzipZeros(n), gzipSync(tail)])` is a gzip bomb.
 */
export function gzipZeros(n: number): Buffer[] {
  const MiB = 1024 * 1024;
  if (n % MiB) throw new Error('gzipZeros: n must be a multiple of 1 MiB');
  zeroMember ??= gzipSync(Buffer.alloc(MiB), { level: 9 });
  return Array<Buffer>(n / MiB).fill(zeroMember);
}
