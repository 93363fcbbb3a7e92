import { KilnError } from '../errors/kiln-error.js';

const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EPIPE', 'EAI_AGAIN']);
const TIMEOUT = new Set(['ETIMEDOUT', 'TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'ESOCKETTIMEDOUT']);

/** Maps an S3 SDK or socket failure to a KilnError with a stable code; `what` names the object. */
export function s3Error(err: unknown, what: string): KilnError {
  if (err instanceof KilnError) return err;
  const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  const code = e.code ?? e.name ?? '';
  if (e.name === 'NoSuchKey' || e.name === 'NotFound' || e.name === 'NoSuchBucket' || status === 404) {
    return new KilnError('KILN_RELEASE_NOT_FOUND', `${what} does not exist in the bucket`, { cause: err });
  }
  if (UNREACHABLE.has(code) || /ECONNREFUSED|socket hang up/.test(e.message ?? '')) {
    return new KilnError('KILN_S3_UNREACHABLE', `cannot reach S3 for ${what}: ${e.message ?? code}`, { cause: err });
  }
  if (TIMEOUT.has(code) || /timed? ?out/i.test(e.message ?? '')) {
    return new KilnError('KILN_S3_TIMEOUT', `S3 did not answer in time for ${what}: ${e.message ?? code}`, { cause: err });
  }
  return new KilnError('KILN_S3_ERROR', `S3 failed for ${what}: ${e.message ?? code}${status ? ` (HTTP ${status})` : ''}`, { cause: err });
}

/** Failures where the bucket is away, not wrong: worth waiting or retrying for. */
export const TRANSIENT_S3_CODES: ReadonlySet<string> = new Set(['KILN_S3_UNREACHABLE', 'KILN_S3_TIMEOUT', 'KILN_S3_ERROR']);
