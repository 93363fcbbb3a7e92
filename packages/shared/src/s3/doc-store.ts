import type { S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { KilnError } from '../errors/kiln-error.js';
import { parseJson } from '../system/json-file.js';
import { s3Objects } from './s3-objects.js';

/**
 * Attempts of a record read whose connection drops (a body cut short: the SDK's own retries end
 * with the response headers). Timeouts and error answers are the SDK's to retry, not again here.
 */
const GET_ATTEMPTS = 3;

/** JSON records in the bucket (the controller's fleets and deployments): the state it can rebuild from. */
export interface DocStore {
  get<T>(key: string, schema: z.ZodType<T>): Promise<T | undefined>;
  put(key: string, value: unknown): Promise<void>;
  remove(key: string): Promise<void>;
  /** keys (relative to the store) under `prefix` */
  list(prefix: string): Promise<string[]>;
}

export function createDocStore(client: S3Client, bucket: string, prefix = ''): DocStore {
  const objects = s3Objects(client, bucket);
  return {
    async get(key, schema) {
      let bytes: Buffer | undefined;
      for (let attempt = 1; !bytes; attempt++) {
        try {
          bytes = await objects.getSmall(prefix + key);
        } catch (err) {
          if (err instanceof KilnError && err.code === 'KILN_RELEASE_NOT_FOUND') return undefined;
          if (!(err instanceof KilnError && err.code === 'KILN_S3_UNREACHABLE') || attempt === GET_ATTEMPTS) throw err;
          await new Promise((r) => setTimeout(r, 100 * attempt));
        }
      }
      return parseJson(bytes.toString('utf8'), schema, { code: 'KILN_STATE_INVALID', what: objects.where(prefix + key) });
    },
    put: (key, value) => objects.put(prefix + key, Buffer.from(JSON.stringify(value, null, 2) + '\n'), 'application/json'),
    remove: (key) => objects.remove(prefix + key),
    list: async (p) => (await objects.list(prefix + p)).map((k) => k.slice(prefix.length)),
  };
}
