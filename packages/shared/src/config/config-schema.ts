import { z } from 'zod';
import { AppName, FleetName } from '../release/names.js';
import { Sha256 } from '../release/release-schema.js';

/** The longest config value, in UTF-8 bytes: one environment variable, not a file. */
export const MAX_CONFIG_VALUE_BYTES = 32 * 1024;
/**
 * The largest config document. Every value ends up in the app's environment, and Linux refuses an
 * execve whose arguments and environment pass 2 MiB (a quarter of the default 8 MiB stack): half
 * of that leaves the command line, PATH and kiln's own variables room.
 */
export const MAX_CONFIG_BYTES = 1024 * 1024;
export const MAX_CONFIG_KEY_LENGTH = 128;
/** A seq is written in 10 digits in its key (so the bucket lists versions in order). */
export const MAX_CONFIG_SEQ = 9_999_999_999;
const Seq = z.number().int().min(1).max(MAX_CONFIG_SEQ);

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Why `key` cannot name a config entry, or undefined when it can. Never quotes anything but the key. */
export function configKeyProblem(key: string): string | undefined {
  if (key.length > MAX_CONFIG_KEY_LENGTH) return `a key is at most ${MAX_CONFIG_KEY_LENGTH} characters`;
  if (!KEY.test(key)) return 'a key is an environment variable name: letters, digits and "_", not starting with a digit';
  if (key === 'PORT' || key.startsWith('KILN_')) return `kiln sets ${key.startsWith('KILN_') ? 'KILN_* variables' : 'PORT'} itself: pick another name`;
  return undefined;
}

/** A config key: the name of the environment variable the app gets it as. */
export const ConfigKey = z.string().superRefine((key, ctx) => {
  const problem = configKeyProblem(key);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});
export type ConfigKey = z.infer<typeof ConfigKey>;

/** A plain config value: it is written to the bucket as it is, so it must be no secret. */
export const ConfigValue = z
  .string()
  .refine((v) => Buffer.byteLength(v) <= MAX_CONFIG_VALUE_BYTES, `a value is at most ${MAX_CONFIG_VALUE_BYTES / 1024} KiB`)
  .refine((v) => !v.includes('\0'), 'a value cannot hold a NUL character (no environment variable can)');

export const SECRET_REF_KINDS = ['file', 'env', 'aws-ssm', 'aws-secretsmanager'] as const;
export type SecretRefKind = (typeof SECRET_REF_KINDS)[number];

/** What each kind of reference names after its `kind:` prefix, and the pattern it must match. */
const REF_TARGETS: Record<SecretRefKind, { pattern: RegExp; rule: string }> = {
  file: { pattern: /^\/[^\0]{0,4095}$/, rule: 'file:/ABSOLUTE/PATH (a file on the host)' },
  env: { pattern: /^[A-Za-z_][A-Za-z0-9_]{0,127}$/, rule: "env:NAME (a variable of the agent's environment)" },
  // SSM parameter names: letters, digits and _ . - in /-separated levels (AWS allows 2048 characters with the path).
  'aws-ssm': { pattern: /^(?=.{1,2048}$)\/?[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/, rule: 'aws-ssm:/PATH/NAME (an SSM parameter name)' },
  // A secret's name (letters, digits and /_+=.@-, 512 characters) or its ARN.
  'aws-secretsmanager': {
    pattern: /^([A-Za-z0-9/_+=.@-]{1,512}|arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512})$/,
    rule: 'aws-secretsmanager:NAME or aws-secretsmanager:ARN (a Secrets Manager secret)',
  },
};

const REF_FORMS = SECRET_REF_KINDS.map((k) => REF_TARGETS[k].rule).join(', ');

/**
 * A reference split into its kind and what it names, or the problem with it. The problem never
 * quotes the reference: a secret's value typed where its reference belongs must not be echoed.
 */
export function splitSecretRef(ref: string): { kind: SecretRefKind; target: string } | { problem: string } {
  const colon = ref.indexOf(':');
  const kind = SECRET_REF_KINDS.find((k) => k === ref.slice(0, colon));
  if (colon < 0 || !kind) return { problem: `not a secret reference: use one of ${REF_FORMS}` };
  const target = ref.slice(colon + 1);
  if (!REF_TARGETS[kind].pattern.test(target)) return { problem: `a malformed ${kind}: reference: use ${REF_TARGETS[kind].rule}` };
  return { kind, target };
}

/** Where a secret's value comes from, resolved on the host: `file:/path`, `env:NAME`, `aws-ssm:/path/name`, `aws-secretsmanager:NAME-or-ARN`. */
export const SecretRef = z.string().superRefine((ref, ctx) => {
  const split = splitSecretRef(ref);
  if ('problem' in split) ctx.addIssue({ code: 'custom', message: split.problem });
});
export type SecretRef = z.infer<typeof SecretRef>;

/** A record keyed by config keys, whose key problems read as such (zod's own says "Invalid key in record"). */
const keyed = <V extends z.ZodType<string>>(value: V) =>
  z.record(ConfigKey, value, { error: (iss) => (iss.code === 'invalid_key' ? iss.issues.map((i) => i.message).join('; ') : undefined) });

/** The keys named in more than one of `groups` (a key is a plain value or a secret, never both). */
export function sharedKeys(...groups: Array<Iterable<string> | undefined>): string[] {
  const seen = new Set<string>();
  const twice = new Set<string>();
  for (const g of groups) for (const k of new Set(g ?? [])) (seen.has(k) ? twice : seen).add(k);
  return [...twice].sort();
}

/**
 * A fleet's config, one signed version of it (docs/config.md): plain values and references to
 * secrets, by the environment variable the app gets each as. Never a secret's value.
 */
export const FleetConfig = z
  .strictObject({
    schema: z.literal(1),
    app: AppName,
    fleet: FleetName,
    /** grows strictly per app and fleet with every version */
    seq: Seq,
    values: keyed(ConfigValue),
    secrets: keyed(SecretRef),
    createdAt: z.string(),
  })
  .superRefine((c, ctx) => {
    for (const key of sharedKeys(Object.keys(c.values), Object.keys(c.secrets))) {
      ctx.addIssue({ code: 'custom', path: ['secrets', key], message: 'a key is a plain value or a secret, not both' });
    }
  });
export type FleetConfig = z.infer<typeof FleetConfig>;

/** A config version as a deployment names it: its seq and the sha256 of its exact bytes. */
export const ConfigRef = z.strictObject({ seq: Seq, sha256: Sha256 });
export type ConfigRef = z.infer<typeof ConfigRef>;

/**
 * A change to a fleet's config: `set` plain values, point `secrets` at references, `unset` keys;
 * at least one key, each key in one of them only.
 */
export const ConfigChange = z
  .strictObject({
    set: keyed(ConfigValue).optional(),
    secrets: keyed(SecretRef).optional(),
    unset: z.array(ConfigKey).max(1000).optional(),
  })
  .superRefine((c, ctx) => {
    const groups = [Object.keys(c.set ?? {}), Object.keys(c.secrets ?? {}), c.unset ?? []];
    if (!groups.some((g) => g.length)) ctx.addIssue({ code: 'custom', message: 'name at least one key to set, point at a secret or unset' });
    for (const key of sharedKeys(...groups)) ctx.addIssue({ code: 'custom', path: [key], message: 'a key is named twice: set it, point it at a secret or unset it, once' });
  });
export type ConfigChange = z.infer<typeof ConfigChange>;
