import type { S3Client } from '@aws-sdk/client-s3';
import { formatZodError } from '../errors/format-zod-error.js';
import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { checkName } from '../release/names.js';
import type { SignedObject } from '../release/release-store.js';
import { sha256Hex, signBytes, verifyBytes, type PrivateKey, type PublicKey } from '../release/signing.js';
import { s3Objects } from '../s3/s3-objects.js';
import { parseJson } from '../system/json-file.js';
import { ConfigChange, FleetConfig, MAX_CONFIG_BYTES, MAX_CONFIG_SEQ } from './config-schema.js';

/** Seqs are written as 10 digits, so that the bucket lists a fleet's versions in order. */
const SEQ_DIGITS = 10;

/** The fleet config part of the bucket (docs/release-format.md); every config key is built here and nowhere else. */
export interface ConfigStore {
  readonly bucket: string;
  readonly prefix: string;
  /** one version's signed document; KILN_CONFIG_NOT_FOUND when there is none */
  getConfig(app: string, fleet: string, seq: number): Promise<SignedObject>;
  /** writes a version (its signature first); KILN_CONFIG_STALE unless `seq` is above every one written */
  putConfig(app: string, fleet: string, seq: number, obj: SignedObject): Promise<void>;
  /** the seqs of the documents there, ascending, and the highest seq anything was written at (a signature without its document counts) */
  listSeqs(app: string, fleet: string): Promise<{ docs: number[]; highest: number }>;
}

export function createConfigStore(client: S3Client, bucket: string, prefix = ''): ConfigStore {
  const dir = (app: string, fleet: string) => `${prefix}config/${checkName('app', app)}/${checkName('fleet', fleet)}/`;
  const docKey = (app: string, fleet: string, seq: number) => {
    if (!Number.isSafeInteger(seq) || seq < 1 || seq > MAX_CONFIG_SEQ) throw new Error(`config seq ${seq} is not an integer from 1 to ${MAX_CONFIG_SEQ}`);
    return `${dir(app, fleet)}${String(seq).padStart(SEQ_DIGITS, '0')}.json`;
  };
  const { getSmall, put, list, where } = s3Objects(client, bucket);

  async function listSeqs(app: string, fleet: string): Promise<{ docs: number[]; highest: number }> {
    const base = dir(app, fleet);
    const docs: number[] = [];
    let highest = 0;
    for (const key of await list(base)) {
      const m = /^(\d{10})\.json(\.sig)?$/.exec(key.slice(base.length));
      if (!m) continue;
      const seq = Number(m[1]);
      highest = Math.max(highest, seq);
      if (!m[2]) docs.push(seq);
    }
    return { docs: docs.sort((a, b) => a - b), highest };
  }

  return {
    bucket,
    prefix,
    async getConfig(app, fleet, seq) {
      const key = docKey(app, fleet, seq);
      try {
        const [bytes, sig] = await Promise.all([getSmall(key), getSmall(`${key}.sig`)]);
        return { bytes, sig };
      } catch (err) {
        if (!isKilnError(err, 'KILN_RELEASE_NOT_FOUND')) throw err;
        throw new KilnError('KILN_CONFIG_NOT_FOUND', `fleet ${fleet} of ${app} has no config seq ${seq} (no ${where(key)} or its signature)`, { cause: err });
      }
    },
    async putConfig(app, fleet, seq, obj) {
      const key = docKey(app, fleet, seq);
      const { highest } = await listSeqs(app, fleet);
      const stale = () => new KilnError('KILN_CONFIG_STALE', `config seq ${seq} of fleet ${fleet} (${app}) is not above the latest one written (${highest}): a replay, or another publish at the same time; publish again`);
      if (seq <= highest) throw stale();
      try {
        // The signature first: a document is listed only once it can be verified. Both only if
        // absent (enforced on AWS), so a publish racing this one fails before it overwrites anything.
        await put(`${key}.sig`, obj.sig, 'application/json', true);
        await put(key, obj.bytes, 'application/json', true);
      } catch (err) {
        if (isKilnError(err, 'KILN_RELEASE_EXISTS')) throw Object.assign(stale(), { cause: err });
        throw err;
      }
    },
    listSeqs,
  };
}

/** A config version read from the bucket and checked: signature, digest, shape, and that it is the one its key names. */
export interface VerifiedConfig {
  config: FleetConfig;
  bytes: Buffer;
  sig: Buffer;
  sha256: string;
}

/**
 * One version of a fleet's config, verified with the pinned `keys`; with `sha256`, it must be
 * exactly those bytes. A document naming another app, fleet or seq than its key is refused: one
 * fleet's config cannot be served as another's, nor an old version as a new one.
 */
export async function readConfig(store: ConfigStore, app: string, fleet: string, seq: number, keys: PublicKey[], opts: { sha256?: string } = {}): Promise<VerifiedConfig> {
  const what = `config ${app}/${fleet} seq ${seq}`;
  const { bytes, sig } = await store.getConfig(app, fleet, seq);
  verifyBytes(bytes, sig, keys, what);
  const sha256 = sha256Hex(bytes);
  if (opts.sha256 !== undefined && sha256 !== opts.sha256) throw new KilnError('KILN_CONFIG_MISMATCH', `${what} has sha256 ${sha256}, not the ${opts.sha256} asked for`);
  if (bytes.length > MAX_CONFIG_BYTES) throw new KilnError('KILN_FLEET_CONFIG_INVALID', `${what} is ${bytes.length} bytes, over the ${MAX_CONFIG_BYTES}-byte limit`);
  const config = parseJson(bytes.toString('utf8'), FleetConfig, { code: 'KILN_FLEET_CONFIG_INVALID', what });
  if (config.app !== app || config.fleet !== fleet || config.seq !== seq) {
    throw new KilnError('KILN_CONFIG_MISMATCH', `${what} is the document of ${config.app}/${config.fleet} seq ${config.seq}: copied from another key, refused`);
  }
  return { config, bytes, sig, sha256 };
}

async function latestWithSeqs(store: ConfigStore, app: string, fleet: string, keys: PublicKey[]): Promise<{ latest: VerifiedConfig | undefined; highest: number }> {
  const { docs, highest } = await store.listSeqs(app, fleet);
  const last = docs.at(-1);
  return { latest: last === undefined ? undefined : await readConfig(store, app, fleet, last, keys), highest };
}

/** The fleet's newest config version, verified; undefined when it has none yet. */
export async function latestConfig(store: ConfigStore, app: string, fleet: string, keys: PublicKey[]): Promise<VerifiedConfig | undefined> {
  return (await latestWithSeqs(store, app, fleet, keys)).latest;
}

/** Every version of the fleet's config, verified, oldest first; one that does not verify fails the whole history. */
export async function configHistory(store: ConfigStore, app: string, fleet: string, keys: PublicKey[]): Promise<VerifiedConfig[]> {
  const { docs } = await store.listSeqs(app, fleet);
  const out: VerifiedConfig[] = [];
  for (let i = 0; i < docs.length; i += 16) out.push(...(await Promise.all(docs.slice(i, i + 16).map((seq) => readConfig(store, app, fleet, seq, keys)))));
  return out;
}

/** What changed from one version to the next: keys added or changed (`set`), keys gone (`unset`). */
export function configChanges(before: FleetConfig | undefined, after: FleetConfig): { set: string[]; unset: string[] } {
  const entries = (c: FleetConfig | undefined) => new Map<string, string>([...Object.entries(c?.values ?? {}).map(([k, v]) => [k, `value:${v}`] as const), ...Object.entries(c?.secrets ?? {}).map(([k, r]) => [k, `secret:${r}`] as const)]);
  const [was, now] = [entries(before), entries(after)];
  return { set: [...now].filter(([k, v]) => was.get(k) !== v).map(([k]) => k).sort(), unset: [...was.keys()].filter((k) => !now.has(k)).sort() };
}

export interface PublishConfigOptions {
  store: ConfigStore;
  app: string;
  fleet: string;
  /** plain values to set; a key that was a secret becomes a plain value */
  set?: Record<string, string>;
  /** secret references to set; a key that was a plain value becomes a secret */
  secrets?: Record<string, string>;
  /** keys to remove, plain or secret; one the config does not have is KILN_CONFIG_KEY_UNKNOWN */
  unset?: string[];
  key: PrivateKey;
  /** pinned keys the latest version is verified with */
  keys: PublicKey[];
  now?: () => Date;
}

const sorted = (r: Record<string, string>) => Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/** Applies a change to the fleet's latest config and writes it, signed, as version seq + 1. */
export async function publishConfig(opts: PublishConfigOptions): Promise<{ config: FleetConfig; sha256: string }> {
  const app = checkName('app', opts.app);
  const fleet = checkName('fleet', opts.fleet);
  const parsed = ConfigChange.safeParse({ set: opts.set, secrets: opts.secrets, unset: opts.unset });
  if (!parsed.success) throw new KilnError('KILN_CONFIG_CHANGE_INVALID', `the config change of fleet ${fleet} is invalid: ${formatZodError(parsed.error)}`);
  const change = parsed.data;
  const { latest, highest } = await latestWithSeqs(opts.store, app, fleet, opts.keys);
  const values: Record<string, string> = { ...latest?.config.values };
  const secrets: Record<string, string> = { ...latest?.config.secrets };
  const unknown = (change.unset ?? []).filter((k) => !(k in values) && !(k in secrets));
  if (unknown.length) {
    const has = [...Object.keys(values), ...Object.keys(secrets)].sort();
    throw new KilnError('KILN_CONFIG_KEY_UNKNOWN', `fleet ${fleet} has no config key ${unknown.join(', ')} to unset (${has.length ? `its keys: ${has.join(', ')}` : 'it has no config yet'})`);
  }
  for (const k of change.unset ?? []) {
    delete values[k];
    delete secrets[k];
  }
  for (const [k, v] of Object.entries(change.set ?? {})) {
    values[k] = v;
    delete secrets[k];
  }
  for (const [k, ref] of Object.entries(change.secrets ?? {})) {
    secrets[k] = ref;
    delete values[k];
  }
  const config: FleetConfig = {
    schema: 1,
    app,
    fleet,
    seq: Math.max(latest?.config.seq ?? 0, highest) + 1,
    values: sorted(values),
    secrets: sorted(secrets),
    createdAt: (opts.now ?? (() => new Date()))().toISOString(),
  };
  const bytes = Buffer.from(JSON.stringify(config, null, 2) + '\n');
  if (bytes.length > MAX_CONFIG_BYTES) throw new KilnError('KILN_CONFIG_CHANGE_INVALID', `the config of fleet ${fleet} would be ${bytes.length} bytes, over the ${MAX_CONFIG_BYTES}-byte limit (it all goes into the app's environment)`);
  await opts.store.putConfig(app, fleet, config.seq, { bytes, sig: signBytes(bytes, opts.key) });
  return { config, sha256: sha256Hex(bytes) };
}
