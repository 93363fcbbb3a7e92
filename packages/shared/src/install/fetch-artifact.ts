import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { KilnError, asKilnError } from '../errors/kiln-error.js';
import type { VerifiedManifest } from '../release/release-resolve.js';
import type { ManifestV1 } from '../release/release-schema.js';
import type { ReleaseStore } from '../release/release-store.js';
import { extractTarGz, type ExtractLimits, type ExtractedFile } from '../release/safe-extract.js';
import { s3Error, TRANSIENT_S3_CODES } from '../s3/s3-errors.js';
import { backoffDelay } from '../system/backoff.js';
import { artifactMeter } from './artifact-meter.js';

export interface ArtifactFetchOptions {
  store: ReleaseStore;
  verified: VerifiedManifest & { manifest: ManifestV1 };
  /** the directory `tree` is made in */
  staging: string;
  limits: ExtractLimits;
  owner?: { uid: number; gid: number } | undefined;
  fsync: boolean;
  attempts: number;
  idleTimeoutMs: number;
  log: Logger;
  onProgress?: ((bytes: number, total: number) => void) | undefined;
}

/** Streams the artifact from S3 through the meter into the extractor; retries a failed transfer from scratch. */
export async function fetchArtifact(opts: ArtifactFetchOptions): Promise<ExtractedFile[]> {
  const { verified, staging, limits, log, attempts } = opts;
  const { manifest } = verified;
  const tree = path.join(staging, 'tree');
  for (let attempt = 1; ; attempt++) {
    await rm(tree, { recursive: true, force: true });
    await mkdir(tree, { mode: 0o755 });
    let meter: ReturnType<typeof artifactMeter> | undefined;
    let ended = false;
    try {
      const body = await opts.store.getArtifact(manifest.artifact.key);
      // Armed only now: a stall timer running while the request waits would fire with no listener.
      const m = (meter = artifactMeter(manifest.artifact.size, opts.idleTimeoutMs));
      m.stream.on('end', () => (ended = true));
      // pipe() passes on neither an error nor a close without end: a reset connection would wait for the stall timer.
      body.once('error', (err) => m.stream.destroy(s3Error(err, manifest.artifact.key)));
      body.once('close', () => {
        if (!body.readableEnded) m.stream.destroy(new KilnError('KILN_S3_UNREACHABLE', `the connection closed after ${m.result().bytes} of ${manifest.artifact.size} bytes of the artifact`));
      });
      let extracted;
      try {
        extracted = await extractTarGz(body.pipe(m.stream), {
          dest: tree,
          limits,
          expected: { files: manifest.files, allowLinks: manifest.allowLinks },
          ...(opts.owner ? { owner: opts.owner } : {}),
          fsync: opts.fsync,
          ...(opts.onProgress ? { onProgress: (n: number) => opts.onProgress!(n, manifest.unpackedSize) } : {}),
        });
      } finally {
        body.destroy();
      }
      const got = m.result();
      if (got.bytes !== manifest.artifact.size) throw new KilnError('KILN_ARTIFACT_SIZE', `the artifact is ${got.bytes} bytes but the manifest declares ${manifest.artifact.size} (truncated download?)`);
      if (got.sha256 !== manifest.artifact.sha256) throw new KilnError('KILN_ARTIFACT_DIGEST', `the artifact has sha256 ${got.sha256} but the manifest declares ${manifest.artifact.sha256}`);
      return extracted.files;
    } catch (err) {
      meter?.stream.destroy(); // disarms the stall timer
      let e = asKilnError(err, 'KILN_INSTALL_FAILED');
      const got = meter?.result();
      if (ended && got && got.bytes < manifest.artifact.size) e = new KilnError('KILN_ARTIFACT_SIZE', `the artifact ended after ${got.bytes} of ${manifest.artifact.size} bytes (truncated)`, { cause: e });
      if ((err as NodeJS.ErrnoException).code === 'ENOSPC' || (e.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC') {
        e = new KilnError('KILN_NO_SPACE', `the disk filled up while extracting ${manifest.app} ${manifest.version}`, { cause: err });
      }
      if (!TRANSIENT_S3_CODES.has(e.code) || attempt >= attempts) throw e;
      log.warn({ err: e, attempt }, 'artifact download failed; retrying');
      await sleep(backoffDelay(attempt, { baseMs: 200, capMs: 5_000 }));
    }
  }
}

