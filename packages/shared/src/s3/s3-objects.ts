import type { S3Client } from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import { KilnError } from '../errors/kiln-error.js';
import { s3Error } from './s3-errors.js';
import { s3Sdk } from './s3-sdk.js';

/** Small objects (manifests, pointers, signatures, records) are read whole; anything larger is refused. */
const MAX_SMALL_OBJECT = 32 * 1024 * 1024;

/** The few object operations every store is built from, with errors mapped to kiln codes. */
export function s3Objects(client: S3Client, bucket: string) {
  const where = (key: string) => `s3://${bucket}/${key}`;
  const { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } = s3Sdk();
  const objects = {
    where,
    async getSmall(key: string): Promise<Buffer> {
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        if ((res.ContentLength ?? 0) > MAX_SMALL_OBJECT) {
          (res.Body as Readable | undefined)?.destroy();
          throw new KilnError('KILN_MANIFEST_INVALID', `${where(key)} is ${res.ContentLength} bytes, over the ${MAX_SMALL_OBJECT}-byte limit`);
        }
        return Buffer.from(await res.Body!.transformToByteArray());
      } catch (err) {
        throw s3Error(err, where(key));
      }
    },
    async put(key: string, body: Buffer, contentType: string, ifNoneMatch = false): Promise<void> {
      try {
        await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType, ...(ifNoneMatch ? { IfNoneMatch: '*' } : {}) }));
      } catch (err) {
        const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
        if (status === 412) throw new KilnError('KILN_RELEASE_EXISTS', `${where(key)} already exists: releases are immutable`, { cause: err });
        throw s3Error(err, where(key));
      }
    },
    async remove(key: string): Promise<void> {
      try {
        await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
      } catch (err) {
        throw s3Error(err, where(key));
      }
    },
    /** Keys under `prefix` with their sizes; with a delimiter, the common prefixes one level down instead (size 0). */
    async listSized(prefix: string, delimiter?: string): Promise<Array<{ key: string; size: number; modifiedAt?: number | undefined }>> {
      const found: Array<{ key: string; size: number; modifiedAt?: number | undefined }> = [];
      let token: string | undefined;
      try {
        do {
          const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token, ...(delimiter ? { Delimiter: delimiter } : {}) }));
          if (delimiter) for (const p of res.CommonPrefixes ?? []) found.push({ key: p.Prefix!, size: 0 });
          else for (const o of res.Contents ?? []) found.push({ key: o.Key!, size: o.Size ?? 0, modifiedAt: o.LastModified?.getTime() });
          token = res.IsTruncated ? res.NextContinuationToken : undefined;
        } while (token);
      } catch (err) {
        throw s3Error(err, where(prefix));
      }
      return found;
    },
  };
  return {
    ...objects,
    /** Keys under `prefix`; with a delimiter, the common prefixes one level down instead. */
    list: async (prefix: string, delimiter?: string): Promise<string[]> => (await objects.listSized(prefix, delimiter)).map((o) => o.key),
  };
}
export type S3Objects = ReturnType<typeof s3Objects>;
