import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { KilnError } from '../errors/kiln-error.js';
import { SignatureFile } from './release-schema.js';
import { formatZodError } from '../errors/format-zod-error.js';

export interface PublicKey {
  keyId: string;
  key: KeyObject;
}
export interface PrivateKey {
  keyId: string;
  key: KeyObject;
}

export function keyIdOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

export function generateReleaseKeyPair(): { privatePem: string; publicPem: string; keyId: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyId: keyIdOf(publicKey),
  };
}

export function parsePrivateKey(pem: string, source: string): PrivateKey {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (cause) {
    throw new KilnError('KILN_KEY_INVALID', `${source} is not a PEM private key`, { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new KilnError('KILN_KEY_INVALID', `${source} is a ${key.asymmetricKeyType} key, not ed25519`);
  return { keyId: keyIdOf(createPublicKey(key)), key };
}

export function parsePublicKey(pem: string, source: string): PublicKey {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (cause) {
    throw new KilnError('KILN_KEY_INVALID', `${source} is not a PEM public key`, { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new KilnError('KILN_KEY_INVALID', `${source} is a ${key.asymmetricKeyType} key, not ed25519`);
  return { keyId: keyIdOf(key), key };
}

async function readKeyFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (cause) {
    throw new KilnError('KILN_KEY_INVALID', `cannot read key file ${file}: ${(cause as Error).message}`, { cause });
  }
}

export async function loadPrivateKey(file: string): Promise<PrivateKey> {
  return parsePrivateKey(await readKeyFile(file), file);
}

export async function loadPublicKeys(files: string[]): Promise<PublicKey[]> {
  return Promise.all(files.map(async (f) => parsePublicKey(await readKeyFile(f), f)));
}

/** Signs the exact bytes; returns the .sig file content. */
export function signBytes(bytes: Uint8Array, key: PrivateKey): Buffer {
  const sig: SignatureFile = { keyId: key.keyId, alg: 'ed25519', signature: sign(null, bytes, key.key).toString('base64') };
  return Buffer.from(JSON.stringify(sig) + '\n');
}

/** Verifies the exact bytes against the pinned keys; throws a KilnError naming what is wrong. */
export function verifyBytes(bytes: Uint8Array, sigFile: Uint8Array, pinned: PublicKey[], what: string): string {
  let parsed: SignatureFile;
  try {
    const result = SignatureFile.safeParse(JSON.parse(Buffer.from(sigFile).toString('utf8')));
    if (!result.success) throw new Error(formatZodError(result.error));
    parsed = result.data;
  } catch (cause) {
    throw new KilnError('KILN_SIGNATURE_INVALID', `the signature of ${what} does not parse: ${(cause as Error).message}`, { cause });
  }
  const key = pinned.find((k) => k.keyId === parsed.keyId);
  if (!key) {
    throw new KilnError('KILN_SIGNATURE_UNKNOWN_KEY', `${what} is signed by key ${parsed.keyId}, which is not among the pinned keys (${pinned.map((k) => k.keyId).join(', ') || 'none'})`);
  }
  if (!verify(null, bytes, key.key, Buffer.from(parsed.signature, 'base64'))) {
    throw new KilnError('KILN_SIGNATURE_INVALID', `the signature of ${what} does not match its bytes (key ${key.keyId}): it was altered after signing`);
  }
  return key.keyId;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
