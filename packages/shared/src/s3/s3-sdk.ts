// The AWS SDK's S3 modules, loaded on first use instead of when @kiln/shared is imported. They take
// about 0.3 s to load, and every `kiln` command imports @kiln/shared, including the ones that never
// call S3 (`kiln status` asks the controller). The packages ship CommonJS, which is also what an
// `import` of them loads, so require() here gives the same module instances.
import { createRequire } from 'node:module';
import type * as ClientS3 from '@aws-sdk/client-s3';
import type * as LibStorage from '@aws-sdk/lib-storage';
import type * as HttpHandler from '@smithy/node-http-handler';

const require = createRequire(import.meta.url);

let clientS3: typeof ClientS3 | undefined;
let libStorage: typeof LibStorage | undefined;
let httpHandler: typeof HttpHandler | undefined;

/** @aws-sdk/client-s3 */
export const s3Sdk = (): typeof ClientS3 => (clientS3 ??= require('@aws-sdk/client-s3') as typeof ClientS3);
/** @aws-sdk/lib-storage (multipart uploads) */
export const s3Storage = (): typeof LibStorage => (libStorage ??= require('@aws-sdk/lib-storage') as typeof LibStorage);
/** @smithy/node-http-handler */
export const s3HttpHandler = (): typeof HttpHandler => (httpHandler ??= require('@smithy/node-http-handler') as typeof HttpHandler);
