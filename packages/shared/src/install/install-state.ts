import { z } from 'zod';
import { ifKilnError } from '../errors/kiln-error.js';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { readJsonFile } from '../system/json-file.js';

export const Via = z.enum(['baked', 'boot', 'hotfix', 'manual', 'rollback']);
export type Via = z.infer<typeof Via>;

/** A fleet config version as the host records it: its seq and the digest of its signed document. */
export const ConfigStamp = z.strictObject({ seq: z.number().int().min(1), sha256: z.string() });
export type ConfigStamp = z.infer<typeof ConfigStamp>;

const InstalledRelease = z.strictObject({
  version: z.string(),
  seq: z.number().int(),
  manifestSha256: z.string(),
  artifactSha256: z.string(),
  via: Via,
  installedAt: z.string(),
  /** the fleet config it runs with (none: the release's own env only) */
  config: ConfigStamp.optional(),
  /** what its install read from the bucket, of what a download of the whole release reads (format 2 fetches only what the host lacked) */
  fetchedBytes: z.number().int().min(0).optional(),
  releaseBytes: z.number().int().min(0).optional(),
  /** hooks a bake skipped (not `onBake`): run when an instance of the image first starts the release */
  pendingHooks: z.array(z.enum(['beforeStart', 'validate', 'beforeStop'])).optional(),
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
  /** what it read from the bucket, of the release's size (an install or rollback that swapped) */
  fetchedBytes: z.number().int().min(0).optional(),
  releaseBytes: z.number().int().min(0).optional(),
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

export const JournalStep = z.enum(['fetch', 'rename', 'mark', 'before-start', 'before-stop', 'swap', 'restart', 'health', 'validate', 'commit']);
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
  /** the fleet config the new release runs with */
  config: ConfigStamp.optional(),
  step: JournalStep,
  /** the hook running at this step: its process group, ended by recovery if the install was killed */
  hook: z.strictObject({ pid: z.number().int(), start: z.string().nullable() }).optional(),
  commandId: z.string().optional(),
  startedAt: z.string(),
  pid: z.number().int(),
});
export type Journal = z.infer<typeof Journal>;

export function emptyState(app: string): InstallState {
  return { schema: 1, app, current: null, previous: null, channels: {}, commands: [], last: null };
}

export const readState = (file: string) => readJsonFile(file, InstallState, { code: 'KILN_STATE_INVALID', what: 'install state' });

/** state.json for a look without the lock: one that does not parse reads as none (an install rebuilds it under the lock). */
export const peekState = (file: string): Promise<InstallState | undefined> => ifKilnError(readState(file), ['KILN_STATE_INVALID'], undefined);
export const readJournal = (file: string) => readJsonFile(file, Journal, { code: 'KILN_STATE_INVALID', what: 'install journal' });
export const writeState = (file: string, state: InstallState) => writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n');
export const writeJournal = (file: string, journal: Journal) => writeFileAtomic(file, JSON.stringify(journal) + '\n');
