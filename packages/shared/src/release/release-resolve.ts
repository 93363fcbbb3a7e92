import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { KilnError } from '../errors/kiln-error.js';
import { parseJson, peekJsonFile } from '../system/json-file.js';
import { checkName } from './names.js';
import { ChannelPointer, Manifest } from './release-schema.js';
import type { ReleaseStore, SignedObject } from './release-store.js';
import { checkEntryPath, type ExtractLimits } from './safe-extract.js';
import { sha256Hex, verifyBytes, type PublicKey } from './signing.js';

/** A version (optionally pinned to its manifest's sha256, as a controller's command does) or a channel. */
/**
 * A version (with the manifest digest it must have, and the signed manifest itself when the caller
 * already holds it: it is verified like a downloaded one, and saves two GETs), or a channel.
 */
export type InstallTarget = { version: string; manifestSha256?: string; manifest?: SignedObject } | { channel: string };

export interface VerifiedPointer {
  pointer: ChannelPointer;
}

export interface VerifiedManifest {
  manifest: Manifest;
  bytes: Buffer;
  sig: Buffer;
  sha256: string;
}

/** Fetches and verifies a channel pointer: signature, names, expiry. The seq is the caller's to check. */
export async function fetchPointer(store: ReleaseStore, app: string, channel: string, keys: PublicKey[], now: Date): Promise<ChannelPointer> {
  const what = `channel pointer ${app}/${channel}`;
  let obj = await store.getPointer(app, channel);
  try {
    verifyBytes(obj.bytes, obj.sig, keys, what);
  } catch (err) {
    // A promote writes the signature, then the pointer: a reader in between sees a mismatch once.
    if (!(err instanceof KilnError) || err.code !== 'KILN_SIGNATURE_INVALID') throw err;
    await sleep(250);
    obj = await store.getPointer(app, channel);
    verifyBytes(obj.bytes, obj.sig, keys, what);
  }
  const pointer = parseJson(obj.bytes.toString('utf8'), ChannelPointer, { code: 'KILN_POINTER_INVALID', what });
  if (pointer.app !== app || pointer.channel !== channel) throw new KilnError('KILN_MANIFEST_MISMATCH', `${what} names ${pointer.app}/${pointer.channel}`);
  if (Date.parse(pointer.expires) <= now.getTime()) {
    throw new KilnError('KILN_POINTER_EXPIRED', `${what} expired at ${pointer.expires}; promote the release again to renew it`);
  }
  return pointer;
}

/** Verifies a manifest's signature and bytes, parses it and checks it against the limits. */
export function verifyManifest(obj: SignedObject, expect: { app: string; version: string; sha256?: string }, keys: PublicKey[], limits: ExtractLimits): VerifiedManifest {
  const what = `manifest ${expect.app}/${expect.version}`;
  verifyBytes(obj.bytes, obj.sig, keys, what);
  const sha256 = sha256Hex(obj.bytes);
  if (expect.sha256 && sha256 !== expect.sha256) {
    throw new KilnError('KILN_MANIFEST_MISMATCH', `${what} has sha256 ${sha256}, not the ${expect.sha256} the channel pointer or command names`);
  }
  const manifest = parseJson(obj.bytes.toString('utf8'), Manifest, { code: 'KILN_MANIFEST_INVALID', what });
  if (manifest.app !== expect.app || manifest.version !== expect.version) {
    throw new KilnError('KILN_MANIFEST_MISMATCH', `${what} describes ${manifest.app}/${manifest.version}`);
  }
  if (manifest.files.length > limits.maxEntries) throw new KilnError('KILN_TAR_TOO_MANY', `${what} lists ${manifest.files.length} entries, over the limit of ${limits.maxEntries}`);
  if (manifest.unpackedSize > limits.maxBytes) throw new KilnError('KILN_TAR_TOO_LARGE', `${what} unpacks to ${manifest.unpackedSize} bytes, over the limit of ${limits.maxBytes}`);
  for (const f of manifest.files) {
    if (checkEntryPath(f.path, limits.maxDepth) !== f.path) throw new KilnError('KILN_MANIFEST_INVALID', `${what} lists the unnormalized path ${f.path}`);
  }
  return { manifest, bytes: obj.bytes, sig: obj.sig, sha256 };
}

const LocalManifest = z.object({ manifest: z.string(), sig: z.string() });

/** A release's signed manifest kept on disk; undefined when it is missing or damaged (the caller fetches it again). */
export async function readLocalManifest(file: string): Promise<SignedObject | undefined> {
  const meta = await peekJsonFile(file, LocalManifest);
  return meta && { bytes: Buffer.from(meta.manifest, 'utf8'), sig: Buffer.from(meta.sig, 'utf8') };
}

/** The stamps a release's files had once written (path → fileStamp); empty when missing or damaged (its files are then hashed). */
export const FileStamps = z.record(z.string(), z.string());

export function targetName(target: InstallTarget): string {
  return 'version' in target ? checkName('version', target.version) : `channel ${checkName('channel', target.channel)}`;
}
