import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, readJsonFile, writeFileAtomic } from '@kiln/shared';
import { z } from 'zod';

// kiln's local directory (`.kiln` by default): what `kiln up`, `kiln keys generate` and `kiln fleet
// create` leave there, so that later commands in the same directory find the controller, S3 and keys.

/** `.kiln/s3.json`: the embedded S3 that `kiln up` runs (endpoint, bucket, local credentials). */
export const localS3File = (home: string) => path.join(home, 's3.json');

/** `.kiln/keys`: release.key (0600) and release.pub from `kiln keys generate`. */
export const defaultKeyDir = (home: string) => path.join(home, 'keys');

/** `.kiln/controller.json`, written by `kiln up` (0600): where the local controller listens and its operator token. */
export const LocalController = z.object({
  url: z.url({ protocol: /^https?$/ }),
  agentsUrl: z.url({ protocol: /^wss?$/ }),
  operatorToken: z.string().min(16),
  /** the PEM certificate `kiln up --tls-cert` serves, trusted by the CLI and local agents */
  ca: z.string().optional(),
});
export type LocalController = z.infer<typeof LocalController>;

export const localControllerFile = (home: string) => path.join(home, 'controller.json');

export const readLocalController = (home: string) => readJsonFile(localControllerFile(home), LocalController, { code: 'KILN_CONFIG_INVALID' });

/**
 * `.kiln/up.json`, written by `kiln up` once it listens and kept after it stops: which process runs
 * (so that `kiln down` signals that process and no other, and a second `kiln up` can name it) and its
 * ports (the next `kiln up` listens on the same ones: agents and instances keep calling them).
 */
export const LocalUp = z.object({
  pid: z.number().int().min(2), // never 0, -1 or a process group: `kill` would reach more than one process
  /** the process's start time, so a reused pid is never taken for it */
  start: z.string().nullable(),
  port: z.number().int().min(1).max(65535),
  s3Port: z.number().int().min(1).max(65535),
  provider: z.enum(['process', 'nspawn']),
  startedAt: z.string(),
  /** process-provider instances `kiln down` stopped: the next `kiln up` starts them again */
  stopped: z.array(z.string()).default([]),
});
export type LocalUp = z.infer<typeof LocalUp>;

export const localUpFile = (home: string) => path.join(home, 'up.json');

export const readLocalUp = (home: string) => readJsonFile(localUpFile(home), LocalUp, { code: 'KILN_STATE_INVALID', what: "`kiln up`'s record" });

export const writeLocalUp = (home: string, rec: LocalUp) => writeFileAtomic(localUpFile(home), JSON.stringify(rec, null, 2) + '\n', 0o600);

/** Where `kiln fleet create` keeps a fleet's agent credential for local agents (0600). */
export const fleetCredentialFile = (home: string, fleet: string) => path.join(home, 'fleets', `${fleet}.credential`);

export async function readFleetCredential(home: string, fleet: string): Promise<string> {
  const file = fleetCredentialFile(home, fleet);
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw new KilnError('KILN_CONFIG_INVALID', `no agent credential for fleet ${fleet} in ${file}: \`kiln fleet create\` saves it there; if the fleet was made elsewhere, write the credential it printed to that file`);
  }
}
