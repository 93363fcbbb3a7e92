import { createHash, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';

/**
 * The header of the controller's answer to an agent's WebSocket upgrade: a nonce fresh for this
 * connection, which the agent's hello signs. A hello recorded on one connection is worthless on
 * another: its signature covers a nonce that connection never had.
 */
export const NONCE_HEADER = 'x-kiln-nonce';

/** What a nonce looks like on the wire (24 random bytes, base64url). */
export const NONCE_PATTERN = /^[A-Za-z0-9_-]{32}$/;

/**
 * Who the agent is, proved on every connection: its ed25519 public key (made on its first boot,
 * kept under its root) and a signature over this connection's nonce and its instance id. The
 * controller pins the key at an instance's first hello and refuses any other for that id.
 */
export const AgentIdentity = z.strictObject({
  /** the raw 32-byte ed25519 public key, base64url */
  publicKey: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a raw ed25519 public key, base64url'),
  /** the 64-byte ed25519 signature over the challenge, base64url */
  signature: z.string().regex(/^[A-Za-z0-9_-]{86}$/, 'an ed25519 signature, base64url'),
});
export type AgentIdentity = z.infer<typeof AgentIdentity>;

/** A nonce for one connection. */
export const newNonce = (): string => randomBytes(24).toString('base64url');

// Names what is signed, so the signature can never pass for one over anything else kiln signs.
const challenge = (nonce: string, instanceId: string) => Buffer.from(`kiln agent hello v1\n${nonce}\n${instanceId}`, 'utf8');

/** The raw public key (base64url) of an ed25519 private or public key. */
export function rawPublicKey(key: KeyObject): string {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  return jwk.x!;
}

/** The agent's side: its identity on the connection whose nonce is `nonce`. */
export function proveIdentity(privateKey: KeyObject, nonce: string, instanceId: string): AgentIdentity {
  return { publicKey: rawPublicKey(privateKey), signature: sign(null, challenge(nonce, instanceId), privateKey).toString('base64url') };
}

/** The controller's side: whether `identity` signed this connection's nonce for this instance. */
export function verifyIdentity(identity: AgentIdentity, nonce: string, instanceId: string): boolean {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: identity.publicKey }, format: 'jwk' });
  } catch (err) {
    // The shape was checked by the schema: a key that still does not load is no proof of anything.
    if (err instanceof Error) return false;
    throw err;
  }
  return verify(null, challenge(nonce, instanceId), key, Buffer.from(identity.signature, 'base64url'));
}

/** A short name of a public key for logs and messages (`SHA256:` and 16 hex digits of its digest). */
export const keyFingerprint = (publicKey: string): string => `SHA256:${createHash('sha256').update(Buffer.from(publicKey, 'base64url')).digest('hex').slice(0, 16)}`;
