import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { S3Location } from '@kiln/shared';
import { checkPortFree } from '../system/free-port.js';

export interface EmbeddedS3Options {
  /** where the objects are kept */
  directory: string;
  bucket: string;
  /** 0 picks a free port */
  port?: number;
}

export interface EmbeddedS3 {
  location: S3Location;
  close(): Promise<void>;
}

/** The local S3 endpoint of `kiln up` and the demo: s3rver on 127.0.0.1, data in a directory. */
export async function startEmbeddedS3(opts: EmbeddedS3Options): Promise<EmbeddedS3> {
  await mkdir(opts.directory, { recursive: true });
  // s3rver cannot report a port it fails to listen on (an 'error' event nobody handles ends the process): look first.
  if (opts.port) await checkPortFree(opts.port);
  // Loaded on use: the other CLI commands should not pay for s3rver's start-up.
  const { default: S3rver } = await import('s3rver');
  const server = new S3rver({
    address: '127.0.0.1',
    port: opts.port ?? 0,
    silent: true,
    directory: opts.directory,
    configureBuckets: [{ name: opts.bucket, configs: [] }],
    vhostBuckets: false,
  });
  const addr = (await server.run()) as AddressInfo;
  return {
    location: {
      bucket: opts.bucket,
      prefix: '',
      endpoint: `http://127.0.0.1:${addr.port}`,
      region: 'us-east-1',
      // s3rver's fixed local credentials; never AWS ones
      accessKeyId: 'S3RVER',
      secretAccessKey: 'S3RVER',
    },
    close: () => server.close(),
  };
}
