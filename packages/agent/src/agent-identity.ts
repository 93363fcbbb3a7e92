import { createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, keyFingerprint, rawPublicKey, writeFileAtomic, type Logger } from '@kiln/shared';

/** The agent's key pair, under its state directory: it proves the instance id the controller pinned it to. */
export const identityFile = (agentDir: string) => path.join(agentDir, 'identity.key');

/**
 * The agent's ed25519 private key: read from `identity.key`, or made on the first boot and written
 * there (0600) before any connection. An unreadable or foreign key is an error, never replaced: a
 * new key would be refused by the controller that pinned the old one, so an operator must see why.
 */
export async function loadIdentity(agentDir: string, log: Logger): Promise<KeyObject> {
  const file = identityFile(agentDir);
  let pem: string | undefined;
  try {
    pem = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new KilnError('KILN_KEY_INVALID', `cannot read the agent's identity key ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (pem !== undefined) {
    let key: KeyObject;
    try {
      key = createPrivateKey(pem);
    } catch (cause) {
      throw new KilnError('KILN_KEY_INVALID', `the agent's identity key ${file} is not a PEM private key; restore it, or relaunch the instance (a new instance gets a new id and a new key)`, { cause });
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new KilnError('KILN_KEY_INVALID', `the agent's identity key ${file} is a ${key.asymmetricKeyType} key, not ed25519`);
    return key;
  }
  const { privateKey } = generateKeyPairSync('ed25519');
  await mkdir(agentDir, { recursive: true });
  await writeFileAtomic(file, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), 0o600);
  log.info({ file, key: keyFingerprint(rawPublicKey(privateKey)) }, 'made the agent identity key (first boot)');
  return privateKey;
}
