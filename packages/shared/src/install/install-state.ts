import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { KilnError } from '../errors/kiln-error.js';
import { formatZodError } from '../errors/format-zod-error.js';

export const Via = z.enum(['baked', 'boot', 'hotfix', 'manual', 'rollback']);
export type Via = z.infer<typeof Via>;

const InstalledRelease = z.strictObject({
  version: z.string(),
  seq: z.number().int(),
  manifestSha256: z.string(),
  artifactSha256: z.string(),
  via: Via,
  installedAt: z.string(),
});
export type InstalledRelease = z.infer<typeof InstalledRelease>;

const ErrorInfo = z.strictObject({ code: z.string(), message: z.string() });

export const Operation = z.strictObject({
  op: z.enum(['install', 'rollback']),
  version: z.string(),
  commandId: z.string().optional(),
  startedAt: z.string(),
  finishedAt: z.string(),
  outcome: z.enum(['installed', 'unchanged', 'failed', 'rolled-back', 'interrupted']),
  error: ErrorInfo.optional(),
});
export type Operation = z.infer<typeof Operation>;

export const InstallState = z.strictObject({
  schema: z.literal(1),
  app: z.string(),
  current: InstalledRelease.nullable(),
  previous: InstalledRelease.nullable(),
  /** highest pointer seq accepted per channel: an older pointer is a replay */
  channels: z.record(z.string(), z.number().int()),
  /** results of recent commands, so the same command id twice is one install */
  commands: z.array(Operation).max(100),
  last: Operation.nullable(),
  /** set when this file was rebuilt from the disk because it did not parse */
  rebuiltAt: z.string().optional(),
});
export type InstallState = z.infer<typeof InstallState>;

export const JournalStep = z.enum(['fetch', 'rename', 'mark', 'swap', 'restart', 'health', 'commit']);
export type JournalStep = z.infer<typeof JournalStep>;

export const Journal = z.strictObject({
  schema: z.literal(1),
  op: z.enum(['install', 'rollback']),
  app: z.string(),
  version: z.string(),
  /** what `current` pointed to before this operation */
  from: z.string().nullable(),
  /** how the release gets here, and the channel pointer that asked for it: recovery commits them */
  via: Via,
  pointer: z.strictObject({ channel: z.string(), seq: z.number().int() }).optional(),
  step: JournalStep,
  commandId: z.string().optional(),
  startedAt: z.string(),
  pid: z.number().int(),
});
export type Journal = z.infer<typeof Journal>;

export function emptyState(app: string): InstallState {
  return { schema: 1, app, current: null, previous: null, channels: {}, commands: [], last: null };
}

async function readJson<T>(file: string, schema: z.ZodType<T>, what: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new KilnError('KILN_STATE_INVALID', `${what} ${file} is not JSON: ${(cause as Error).message}`, { cause });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new KilnError('KILN_STATE_INVALID', `${what} ${file} is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

export const readState = (file: string) => readJson(file, InstallState, 'install state');
export const readJournal = (file: string) => readJson(file, Journal, 'install journal');
export const writeState = (file: string, state: InstallState) => writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n');
export const writeJournal = (file: string, journal: Journal) => writeFileAtomic(file, JSON.stringify(journal) + '\n');
