import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
import { KilnError } from '../errors/kiln-error.js';

export interface MeterResult {
  bytes: number;
  sha256: string;
}

/**
 * Passes the artifact through while counting and hashing it. Fails as soon as it grows past the
 * expected length, and when no byte arrives for `idleMs` (a stalled download).
 */
export function artifactMeter(expectedSize: number, idleMs: number, what = 'the artifact', hashing = true): { stream: Transform; result: () => MeterResult } {
  const hash = createHash('sha256');
  let bytes = 0;
  let digest: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      stream.destroy(new KilnError('KILN_S3_TIMEOUT', `the download of ${what} stalled: no data for ${idleMs} ms after ${bytes} of ${expectedSize} bytes`));
    }, idleMs);
    timer.unref();
  };
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      if (bytes > expectedSize) return cb(new KilnError('KILN_ARTIFACT_SIZE', `${what} is longer than the ${expectedSize} bytes its manifest declares`));
      if (hashing) hash.update(chunk);
      arm();
      cb(null, chunk);
    },
    flush(cb) {
      clearTimeout(timer);
      digest = hash.digest('hex');
      cb();
    },
    destroy(err, cb) {
      clearTimeout(timer);
      cb(err);
    },
  });
  arm();
  return {
    stream,
    result: () => ({ bytes, sha256: digest ?? hash.copy().digest('hex') }),
  };
}
