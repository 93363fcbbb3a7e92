import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import {
  KilnError,
  S3Location,
  createReleaseStore,
  createS3Client,
  formatZodError,
  ifMissing,
  isKilnError,
  loadPrivateKey,
  loadPublicKeys,
  readJsonFile,
  type Logger,
  type PrivateKey,
  type PublicKey,
  type ReleaseStore,
} from '@kiln/shared';
import { defaultKeyDir, localS3File } from '../local/local-files.js';

export interface CliIO {
  stdout: Writable & { isTTY?: boolean; columns?: number };
  stderr: Writable & { isTTY?: boolean; columns?: number };
  env: Record<string, string | undefined>;
  cwd: string;
  /**
   * Calls `handler` on Ctrl-C (SIGINT) instead of the default exit, until the returned function is
   * called. Commands that follow something running elsewhere use it to say it goes on; absent
   * (a command run inside another, a test), Ctrl-C does what it always does.
   */
  onInterrupt?: (handler: () => void) => () => void;
}

export interface CliContext {
  io: CliIO;
  log: Logger;
  /** kiln's local directory: keys, the embedded S3's data and address */
  home: string;
  json: boolean;
  /** a test hook: the install pauses (forever) when it reaches this step */
  pauseAt: string | undefined;
  /** runs another kiln command in this process (the demo drives the real commands with it) */
  runKiln(argv: string[], io: CliIO): Promise<number>;
}

export type Flags = Record<string, string | boolean | string[] | undefined>;

export const str = (flags: Flags, name: string): string | undefined => {
  const v = flags[name];
  return typeof v === 'string' ? v : undefined;
};

/** A whole-number option from `min` to `max`, or undefined when not given; KILN_USAGE otherwise. */
export function intFlag(flags: Flags, name: string, min: number, max: number): number | undefined {
  const v = str(flags, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new KilnError('KILN_USAGE', `--${name} ${v}: a whole number from ${min} to ${max}`);
  return n;
}

export const list = (flags: Flags, name: string): string[] => {
  const v = flags[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
};

/**
 * Where releases live: flags, then KILN_* variables, then the embedded S3 that `kiln up` runs.
 * With `optional`, nothing configured at all gives undefined instead of an error.
 */
export async function resolveLocation(flags: Flags, ctx: CliContext, optional: true): Promise<S3Location | undefined>;
export async function resolveLocation(flags: Flags, ctx: CliContext, optional?: false): Promise<S3Location>;
export async function resolveLocation(flags: Flags, ctx: CliContext, optional = false): Promise<S3Location | undefined> {
  const env = ctx.io.env;
  const bucket = str(flags, 'bucket') ?? env.KILN_BUCKET;
  const endpoint = str(flags, 's3-endpoint') ?? env.KILN_S3_ENDPOINT;
  if (bucket) {
    const parsed = S3Location.safeParse({
      bucket,
      prefix: str(flags, 'prefix') ?? env.KILN_PREFIX ?? '',
      ...(endpoint ? { endpoint } : {}),
      ...((str(flags, 'region') ?? env.AWS_REGION) ? { region: str(flags, 'region') ?? env.AWS_REGION } : {}),
      ...(endpoint && env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY } : {}),
    });
    if (!parsed.success) throw new KilnError('KILN_CONFIG_INVALID', `bad S3 location: ${formatZodError(parsed.error)}`);
    return parsed.data;
  }
  const local = await readJsonFile(localS3File(ctx.home), S3Location, { code: 'KILN_CONFIG_INVALID' });
  if (local || optional) return local;
  throw new KilnError('KILN_CONFIG_INVALID', `no bucket given and no local S3 running: start one with \`kiln up\` (in this directory), or pass --bucket (and --s3-endpoint for S3-compatible servers)`);
}

export async function openStore(flags: Flags, ctx: CliContext): Promise<ReleaseStore> {
  const loc = await resolveLocation(flags, ctx);
  return createReleaseStore(createS3Client(loc), loc.bucket, loc.prefix);
}

/** The store when one is configured; undefined when none is (an install from disk needs none). */
export async function openStoreIfAny(flags: Flags, ctx: CliContext): Promise<ReleaseStore | undefined> {
  const loc = await resolveLocation(flags, ctx, true);
  return loc && createReleaseStore(createS3Client(loc), loc.bucket, loc.prefix);
}

export async function signingKey(flags: Flags, ctx: CliContext): Promise<PrivateKey> {
  const file = path.resolve(ctx.io.cwd, str(flags, 'key') ?? ctx.io.env.KILN_RELEASE_KEY ?? path.join(defaultKeyDir(ctx.home), 'release.key'));
  try {
    return await loadPrivateKey(file);
  } catch (err) {
    // No key there at all: say how to make one (a key that is there but bad keeps its own error).
    if (!isKilnError(err, 'KILN_KEY_INVALID') || (err.cause as NodeJS.ErrnoException | undefined)?.code !== 'ENOENT') throw err;
    throw new KilnError('KILN_KEY_INVALID', `no release signing key at ${file}: make one with \`kiln keys generate\` (or pass --key FILE; env KILN_RELEASE_KEY)`, { cause: err });
  }
}

/** The files of the pinned public keys: every --trust FILE, else every *.pub in the home's key directory. */
export async function trustedKeyFiles(flags: Flags, ctx: CliContext): Promise<string[]> {
  let files = list(flags, 'trust').map((f) => path.resolve(ctx.io.cwd, f));
  if (!files.length) {
    const dir = defaultKeyDir(ctx.home);
    files = (await ifMissing(readdir(dir), [])).filter((f) => f.endsWith('.pub')).map((f) => path.join(dir, f));
  }
  if (!files.length) throw new KilnError('KILN_KEY_INVALID', `no release public key to trust: pass --trust FILE, or run \`kiln keys generate\` (keys go to ${defaultKeyDir(ctx.home)})`);
  return files;
}

export async function trustedKeys(flags: Flags, ctx: CliContext): Promise<PublicKey[]> {
  return loadPublicKeys(await trustedKeyFiles(flags, ctx));
}

export function out(ctx: CliContext, text: string): void {
  ctx.io.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function note(ctx: CliContext, text: string): void {
  ctx.io.stderr.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function printJson(ctx: CliContext, value: unknown): void {
  out(ctx, JSON.stringify(value, null, 2));
}
