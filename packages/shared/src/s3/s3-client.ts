import type { S3Client } from '@aws-sdk/client-s3';
import { z } from 'zod';
import { s3HttpHandler, s3Sdk } from './s3-sdk.js';

export const S3Location = z.strictObject({
  bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'an S3 bucket name'),
  /** key prefix, "" or ending in "/" */
  prefix: z.string().regex(/^(|[A-Za-z0-9._\-/]*\/)$/, 'empty or ending in "/"').default(''),
  /** set for S3-compatible endpoints (the embedded one); unset means AWS */
  endpoint: z.url().optional(),
  region: z.string().min(1).optional(),
  /** static credentials for a local endpoint; AWS uses its usual environment/config chain when unset */
  accessKeyId: z.string().optional(),
  secretAccessKey: z.string().optional(),
});
export type S3Location = z.infer<typeof S3Location>;

export interface S3ClientOptions {
  /** connect deadline per attempt */
  connectTimeoutMs?: number;
  /** socket idle deadline per attempt */
  requestTimeoutMs?: number;
  maxAttempts?: number;
}

/**
 * The one place an S3 client is made. Checksums are computed only when required: with the SDK
 * defaults a stream body goes aws-chunked, which S3-compatible servers may store as data.
 */
export function createS3Client(loc: S3Location, opts: S3ClientOptions = {}): S3Client {
  const local = loc.endpoint !== undefined;
  const { S3Client } = s3Sdk();
  return new S3Client({
    ...(local ? { endpoint: loc.endpoint, forcePathStyle: true } : {}),
    region: loc.region ?? (local ? 'us-east-1' : undefined),
    ...(loc.accessKeyId && loc.secretAccessKey ? { credentials: { accessKeyId: loc.accessKeyId, secretAccessKey: loc.secretAccessKey } } : {}),
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: opts.maxAttempts ?? 3,
    requestHandler: awsRequestHandler(opts),
  });
}

/** The HTTP handler of every AWS client kiln makes: connect and idle deadlines per attempt. */
export function awsRequestHandler(opts: Pick<S3ClientOptions, 'connectTimeoutMs' | 'requestTimeoutMs'> = {}) {
  const { NodeHttpHandler } = s3HttpHandler();
  return new NodeHttpHandler({
    connectionTimeout: opts.connectTimeoutMs ?? 3_000,
    requestTimeout: opts.requestTimeoutMs ?? 15_000,
    // smithy 4.x only warns about a breached requestTimeout unless told to throw
    throwOnRequestTimeout: true,
  });
}
