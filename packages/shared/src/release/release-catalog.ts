import { z } from 'zod';
import { catchOnly } from '../errors/catch-only.js';
import { ifKilnError, isKilnError } from '../errors/kiln-error.js';
import { parseJson } from '../system/json-file.js';
import { checkName } from './names.js';
import { ChannelPointer, contentSha256, Manifest, storedSize, type BoundConfig } from './release-schema.js';
import type { ReleaseStore } from './release-store.js';
import { fetchPointer } from './release-resolve.js';
import { sha256Hex, signBytes, verifyBytes, type PrivateKey, type PublicKey } from './signing.js';

export interface ReleaseSummary {
  app: string;
  version: string;
  seq: number;
  createdAt: string;
  size: number;
  files: number;
  sha256: string;
  /** false when the manifest's signature does not verify with the pinned keys */
  verified: boolean;
}

/**
 * Every published release of an app, verified against the pinned keys, in seq order. A version
 * without a manifest (a push under way) or with one that does not parse is left out; a bucket
 * that fails fails the listing, which would otherwise look short.
 */
export async function listReleases(store: ReleaseStore, app: string, keys: PublicKey[]): Promise<ReleaseSummary[]> {
  const versions = await store.listVersions(checkName('app', app));
  const out: ReleaseSummary[] = [];
  const unlisted = (err: unknown) => isKilnError(err, 'KILN_RELEASE_NOT_FOUND') || err instanceof SyntaxError || err instanceof z.ZodError;
  const shown = (v: string) => catchOnly(showRelease(store, app, v, keys), unlisted, undefined);
  for (let i = 0; i < versions.length; i += 16) {
    const batch = await Promise.all(versions.slice(i, i + 16).map(shown));
    for (const r of batch) if (r) out.push(r.summary);
  }
  return out.sort((a, b) => a.seq - b.seq);
}

export async function showRelease(store: ReleaseStore, app: string, version: string, keys: PublicKey[]): Promise<{ summary: ReleaseSummary; manifest: Manifest; manifestSha256: string }> {
  const obj = await store.getManifest(app, version);
  let verified = true;
  try {
    verifyBytes(obj.bytes, obj.sig, keys, `manifest ${app}/${version}`);
  } catch (err) {
    if (!isKilnError(err, 'KILN_SIGNATURE_INVALID', 'KILN_SIGNATURE_UNKNOWN_KEY')) throw err;
    verified = false;
  }
  // A manifest that does not parse is the bucket's fault, said as such (422), never a 500.
  const manifest = parseJson(obj.bytes.toString('utf8'), Manifest, { code: 'KILN_MANIFEST_INVALID', what: `the manifest of ${app} ${version}` });
  return {
    manifest,
    manifestSha256: sha256Hex(obj.bytes),
    summary: { app, version, seq: manifest.seq, createdAt: manifest.createdAt, size: storedSize(manifest), files: manifest.files.length, sha256: contentSha256(manifest), verified },
  };
}

export interface PromoteOptions {
  store: ReleaseStore;
  app: string;
  version: string;
  channel: string;
  key: PrivateKey;
  /** pinned keys the existing manifest and pointer are checked with */
  keys: PublicKey[];
  ttlMs: number;
  /** the fleet config version the release runs with, bound to it in the same signed pointer */
  config?: BoundConfig | undefined;
  now?: () => Date;
}

/** Writes the signed channel pointer to a release (and the config it runs with); its seq is one more than the pointer it replaces. */
export async function promoteRelease(opts: PromoteOptions): Promise<ChannelPointer> {
  const app = checkName('app', opts.app);
  const channel = checkName('channel', opts.channel);
  const version = checkName('version', opts.version);
  const now = (opts.now ?? (() => new Date()))();
  const obj = await opts.store.getManifest(app, version);
  verifyBytes(obj.bytes, obj.sig, opts.keys, `manifest ${app}/${version}`);
  // An expired pointer still counts: the next one must outgrow it.
  const seq = ((await findPointer(opts.store, app, channel, opts.keys))?.seq ?? 0) + 1;
  const pointer: ChannelPointer = {
    schema: 1,
    app,
    channel,
    version,
    seq,
    manifestSha256: sha256Hex(obj.bytes),
    ...(opts.config ? { config: opts.config } : {}),
    createdAt: now.toISOString(),
    expires: new Date(now.getTime() + opts.ttlMs).toISOString(),
  };
  const bytes = Buffer.from(JSON.stringify(pointer, null, 2) + '\n');
  await opts.store.putPointer(app, channel, { bytes, sig: signBytes(bytes, opts.key) });
  return pointer;
}

/** The channel's pointer, verified with `keys`, expired or not. */
export async function readPointer(store: ReleaseStore, app: string, channel: string, keys: PublicKey[]): Promise<ChannelPointer> {
  return fetchPointer(store, app, channel, keys, new Date(0));
}

/**
 * As readPointer, but undefined when the channel has no pointer. Only an absent pointer is: one that
 * does not verify or parse, or a bucket that fails, is thrown, never read as "no pointer yet".
 */
export function findPointer(store: ReleaseStore, app: string, channel: string, keys: PublicKey[]): Promise<ChannelPointer | undefined> {
  return ifKilnError(readPointer(store, app, channel, keys), ['KILN_RELEASE_NOT_FOUND'], undefined);
}
