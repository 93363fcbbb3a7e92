import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startEmbeddedS3, type EmbeddedS3 } from '@kiln/controller';
import { createReleaseStore, createS3Client, type ReleaseStore, type S3ClientOptions } from '@kiln/shared';

export interface S3Fixture {
  s3: EmbeddedS3;
  store: ReleaseStore;
  dir: string;
  /** a store on the same bucket through another endpoint (a proxy) or client options */
  storeVia(endpoint: string, opts?: S3ClientOptions): ReleaseStore;
  close(): Promise<void>;
}

/** A real S3 endpoint (s3rver) on 127.0.0.1 with its data in a temp dir. */
export async function startS3(bucket = 'kiln'): Promise<S3Fixture> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kiln-test-s3-'));
  const s3 = await startEmbeddedS3({ directory: dir, bucket });
  return {
    s3,
    dir,
    store: createReleaseStore(createS3Client(s3.location), bucket),
    storeVia: (endpoint, opts) => createReleaseStore(createS3Client({ ...s3.location, endpoint }, opts), bucket),
    async close() {
      await s3.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Every file the bucket's server keeps (objects and their metadata), read whole: what a search for a value must not find. */
export async function bucketFiles(s3: Pick<S3Fixture, 'dir'>): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(s3.dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(await readFile(path.join(e.parentPath, e.name), 'latin1'));
  return out;
}
