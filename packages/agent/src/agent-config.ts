import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { AppName, ChannelName, InstanceId, KilnError, S3Location, formatZodError, parsePublicKey, readJsonFile, type PublicKey } from '@kiln/shared';
import { z } from 'zod';

const ms = (min: number, max: number, dflt: number) => z.number().int().min(min).max(max).default(dflt);

/** `/etc/kiln/agent.json` under the agent's root. Unknown keys are refused: a typo must not pass silently. */
export const AgentConfig = z.strictObject({
  instanceId: InstanceId,
  imageId: InstanceId,
  app: AppName,
  channel: ChannelName,
  s3: S3Location,
  /** absent: the agent runs from the channel pointer alone (boot + polling) */
  controller: z
    .strictObject({
      url: z.url({ protocol: /^wss?$/ }),
      /** the fleet's agent credential, sent as a bearer token */
      credential: z.string().min(16).max(512),
      /** PEM file of a private CA for wss://, relative to the root */
      ca: z.string().optional(),
    })
    .optional(),
  /** pinned release public keys: PEM text, or paths of PEM files under the root */
  keys: z.array(z.string().min(1)).min(1),
  serviceManager: z.enum(['systemd', 'process']).default('process'),
  /** the port this instance gives the app (PORT), when several instances share a host */
  port: z.number().int().min(1).max(65535).optional(),
  /** S3 pointer polling while the controller is unreachable */
  pollIntervalMs: ms(1_000, 86_400_000, 60_000),
  /** the periodic tree check against the manifest's digests */
  treeCheckIntervalMs: ms(1_000, 86_400_000, 300_000),
  /** ping period; a peer silent for two periods is dropped */
  heartbeatMs: ms(100, 600_000, 15_000),
  /** the cap of the reconnect and boot-retry backoff */
  backoffCapMs: ms(100, 600_000, 30_000),
  /** releases kept beyond current and previous */
  keep: z.number().int().min(0).max(100).default(2),
  /** a bake's builder: once the boot install is done, seal the root (the installed release becomes the image's baked release) */
  seal: z.boolean().default(false),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
});
export type AgentConfig = z.infer<typeof AgentConfig>;
export type AgentConfigInput = z.input<typeof AgentConfig>;

export const configPath = (root: string) => path.join(path.resolve(root), 'etc/kiln/agent.json');

export function parseAgentConfig(raw: unknown, source: string): AgentConfig {
  const parsed = AgentConfig.safeParse(raw);
  if (!parsed.success) throw new KilnError('KILN_CONFIG_INVALID', `${source} is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

export async function loadAgentConfig(root: string, file = configPath(root)): Promise<AgentConfig> {
  const config = await readJsonFile(file, AgentConfig, { code: 'KILN_CONFIG_INVALID', unreadable: 'KILN_CONFIG_INVALID', what: 'the agent config' });
  if (!config) throw new KilnError('KILN_CONFIG_INVALID', `cannot read the agent config ${file}: ENOENT, there is no such file`);
  return config;
}

/** The pinned keys: inline PEM, or a file under the root. */
export async function loadPinnedKeys(root: string, keys: string[]): Promise<PublicKey[]> {
  return Promise.all(
    keys.map(async (k, i) => {
      if (k.includes('-----BEGIN')) return parsePublicKey(k, `keys[${i}] of the agent config`);
      const file = underRoot(root, k);
      let pem: string;
      try {
        pem = await readFile(file, 'utf8');
      } catch (cause) {
        throw new KilnError('KILN_KEY_INVALID', `cannot read the pinned key ${file}: ${(cause as Error).message}`, { cause });
      }
      return parsePublicKey(pem, file);
    }),
  );
}

/** The private CA for a wss:// controller (`controller.ca`): a PEM file under the root. */
export async function loadControllerCa(root: string, ca: string): Promise<Buffer> {
  const file = underRoot(root, ca);
  try {
    return await readFile(file);
  } catch (cause) {
    throw new KilnError('KILN_CONFIG_INVALID', `cannot read the controller CA ${file} (controller.ca of the agent config): ${(cause as Error).message}`, { cause });
  }
}

/** A config path is always inside the root, whether written absolute (as on the image) or relative. */
export function underRoot(root: string, p: string): string {
  const abs = path.join(path.resolve(root), path.resolve('/', p));
  return abs;
}
