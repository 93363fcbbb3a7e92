import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { constants, gunzipSync, gzipSync } from 'node:zlib';

/** Raw object access behind the release store's back: what an attacker or a broken upload does to the bucket. */
export interface RawBucket {
  get(key: string): Promise<Buffer>;
  put(key: string, body: Buffer): Promise<void>;
  del(key: string): Promise<void>;
}

export function rawBucket(client: S3Client, bucket: string): RawBucket {
  return {
    async get(key) {
      const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await res.Body!.transformToByteArray());
    },
    async put(key, body) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async del(key) {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    },
  };
}

const FCOMMENT = 0x10;

/**
 * Grows a gzip stream to exactly `size` bytes without changing what it decompresses to, by adding
 * a header comment (RFC 1952 FCOMMENT). The stream must have no optional header fields yet.
 */
export function padGzip(gz: Buffer, size: number): Buffer {
  if (gz.length === size) return gz;
  if (gz[0] !== 0x1f || gz[1] !== 0x8b || gz[3] !== 0) throw new Error('padGzip: not a plain gzip stream');
  const extra = size - gz.length - 1; // the comment is NUL-terminated
  if (extra < 0) throw new Error(`padGzip: the stream is already ${gz.length} bytes, over ${size}`);
  const header = Buffer.from(gz.subarray(0, 10));
  header[3] = FCOMMENT;
  return Buffer.concat([header, Buffer.alloc(extra, 0x61), Buffer.from([0]), gz.subarray(10)]);
}

/**
 * The same archive content in different artifact bytes of the same length: only the gzip header's
 * MTIME changes, which no decompressor checks.
 */
export function restampGzip(gz: Buffer): Buffer {
  const out = Buffer.from(gz);
  out.writeUInt32LE((out.readUInt32LE(4) + 12345) >>> 0, 4);
  return out;
}

/**
 * A valid .tar.gz of exactly `gz.length` bytes holding the tar of `gz` changed in place by `edit`
 * (which must keep the tar's length): other content, same artifact length.
 */
export function rewriteTarGz(gz: Buffer, edit: (tar: Buffer) => void): Buffer {
  const tar = gunzipSync(gz);
  edit(tar);
  // The first setting whose output fits (the padding needs at least one byte, or none at all).
  for (const level of [9, 6, 8, 7, 5, 4]) {
    for (const strategy of [constants.Z_DEFAULT_STRATEGY, constants.Z_FILTERED]) {
      for (const memLevel of [8, 9]) {
        const regz = gzipSync(tar, { level, strategy, memLevel });
        if (regz.length < gz.length || regz.length === gz.length) return padGzip(regz, gz.length);
      }
    }
  }
  throw new Error('rewriteTarGz: could not recompress within the original length');
}

/** Overwrites the first occurrence of `find` in a tar with `replace` of the same length (file data, not headers). */
export function replaceInTar(find: string, replace: string): (tar: Buffer) => void {
  if (Buffer.byteLength(find) !== Buffer.byteLength(replace)) throw new Error('replaceInTar: find and replace must have the same length');
  return (tar) => {
    const at = tar.indexOf(find);
    if (at < 0) throw new Error(`replaceInTar: ${JSON.stringify(find)} is not in the archive`);
    tar.write(replace, at);
  };
}

/** Renames the tar entry whose header names `from` to `to` (same length) and fixes the header checksum. */
export function renameTarEntry(from: string, to: string): (tar: Buffer) => void {
  if (Buffer.byteLength(from) !== Buffer.byteLength(to)) throw new Error('renameTarEntry: names must have the same length');
  return (tar) => {
    for (let off = 0; off + 512 <= tar.length; off += 512) {
      const header = tar.subarray(off, off + 512);
      if (header.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '') !== from) continue;
      header.write(to, 0);
      header.fill(0x20, 148, 156);
      let sum = 0;
      for (const b of header) sum += b;
      header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
      return;
    }
    throw new Error(`renameTarEntry: no header names ${from}`);
  };
}
