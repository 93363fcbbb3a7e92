import { get } from 'node:http';
import { ListBucketsCommand } from '@aws-sdk/client-s3';
import { S3Location, createS3Client, ifKilnError, peekJsonFile } from '@kiln/shared';
import { localS3File, readLocalController } from './local-files.js';

/**
 * What of a `kiln up` for this home still answers, if anything ("a local S3 at URL", "a controller
 * at URL"): for a stack whose process is not known by a recorded pid (a kiln that wrote none).
 */
export async function probeLocalStack(home: string): Promise<string | undefined> {
  const loc = await peekJsonFile(localS3File(home), S3Location);
  // An S3 that does not answer is not running: look at the controller.
  if (loc && (await createS3Client(loc, { maxAttempts: 1, connectTimeoutMs: 500 }).send(new ListBucketsCommand({})).then(() => true, () => false))) return `a local S3 at ${loc.endpoint}`;
  const ctl = await ifKilnError(readLocalController(home), ['KILN_CONFIG_INVALID'], undefined);
  if (!ctl || ctl.url.startsWith('https:')) return undefined;
  return (await healthy(`${ctl.url}/v1/health`)) ? `a controller at ${ctl.url}` : undefined;
}

/**
 * Whether URL answers 200 within half a second. node:http, not fetch: a fetch to a port whose holder
 * hangs up at once could stay pending with nothing left to run, and kiln up ended with exit code 13.
 */
function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get(url, { timeout: 500 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}
