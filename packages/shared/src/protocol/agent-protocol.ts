import { z } from 'zod';
import { ConfigStamp, Via } from '../install/install-state.js';
import { KilnError } from '../errors/kiln-error.js';
import { AppName, ChannelName, ProcessName, VersionName } from '../release/names.js';
import { MAX_LOG_LINES } from '../service/app-logs.js';
import { MAX_LINE_BYTES } from '../service/line-splitter.js';
import { BoundConfig, ReleaseRef, Sha256 } from '../release/release-schema.js';
import { formatZodError } from '../errors/format-zod-error.js';
import { AgentIdentity } from './agent-identity.js';

/**
 * Bumped on any change a peer of the previous version would misread; every frame carries it as `v`.
 * 2: the hello carries the agent's identity (a signature over the connection's nonce).
 */
export const PROTOCOL_VERSION = 2;
/** A frame past this is refused with KILN_FRAME_TOO_LARGE (the socket itself closes past 4×). */
export const MAX_FRAME_BYTES = 1024 * 1024;

/** Manifests up to this size (bytes) travel in install commands; larger ones are fetched from the bucket. */
export const MAX_INLINE_MANIFEST = 64 * 1024;
const base64 = (maxBytes: number) => z.string().max(Math.ceil(maxBytes / 3) * 4).regex(/^[A-Za-z0-9+/]*={0,2}$/, 'base64');
const id = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'letters, digits and . _ : - (at most 128)');
const time = z.string().max(40);
// Long messages are cut rather than refused: an error must never make every later report invalid.
const ErrorInfo = z.strictObject({ code: z.string().max(64), message: z.string().transform((m) => m.slice(0, 4096)) });

export const InstanceId = id;

/** What the agent found on disk against the installed manifest's per-file digests. */
export const TreeCheck = z.strictObject({
  status: z.enum(['ok', 'modified', 'unchecked']),
  modified: z.number().int().min(0),
  missing: z.number().int().min(0),
  extra: z.number().int().min(0),
  /** the first few offending paths, each prefixed with M (modified), D (missing) or A (extra) */
  paths: z.array(z.string().max(4200)).max(10),
  checkedAt: time.nullable(),
});
export type TreeCheck = z.infer<typeof TreeCheck>;

export const CommandOutcome = z.enum(['installed', 'unchanged', 'rolled-back', 'failed', 'interrupted', 'reported']);
export type CommandOutcome = z.infer<typeof CommandOutcome>;

/**
 * What an install read from the bucket, of what a download of the whole release reads (format 2
 * fetches only the contents the host lacks). Optional: agents before 0.4.0 do not send them.
 */
const Fetched = {
  fetchedBytes: z.number().int().min(0).optional(),
  releaseBytes: z.number().int().min(0).optional(),
};

/** What an install fetched as a result, a report or a record carries it: both byte counts, or neither. */
export function fetchedOf(f: { fetchedBytes?: number | undefined; releaseBytes?: number | undefined } | undefined): { fetchedBytes?: number; releaseBytes?: number } {
  return f?.fetchedBytes !== undefined && f.releaseBytes !== undefined ? { fetchedBytes: f.fetchedBytes, releaseBytes: f.releaseBytes } : {};
}

export const CommandResult = z.strictObject({
  commandId: id,
  outcome: CommandOutcome,
  version: VersionName.optional(),
  error: ErrorInfo.optional(),
  /** set when the command installed (or rolled back to) a release: what its install fetched */
  ...Fetched,
  finishedAt: time,
});
export type CommandResult = z.infer<typeof CommandResult>;

/** Everything an agent says about its instance: sent on connect, on every change and on request. */
export const AgentReport = z.strictObject({
  instanceId: id,
  imageId: id,
  app: AppName,
  channel: ChannelName,
  agentVersion: z.string().max(64),
  /** the release the image was baked with, from the image marker */
  image: ReleaseRef.nullable(),
  /** with what the install of it fetched, when state.json records that (installs by agents from 0.4.0 on) */
  installed: ReleaseRef.extend({ artifactSha256: Sha256, via: Via, installedAt: time, ...Fetched }).nullable(),
  /** the fleet config version the app runs with; null: none (agents before 0.3.0 do not send it) */
  config: ConfigStamp.nullable().default(null),
  service: z.strictObject({ active: z.boolean() }),
  tree: TreeCheck,
  operation: z.strictObject({ commandId: id.optional(), op: z.enum(['install', 'rollback']), version: VersionName, step: z.string().max(32), startedAt: time }).nullable(),
  lastError: ErrorInfo.extend({ at: time }).nullable(),
  /** how many commands wait behind the running one */
  queued: z.number().int().min(0),
  at: time,
});
export type AgentReport = z.infer<typeof AgentReport>;

export const CommandAction = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('install'),
    version: VersionName,
    seq: z.number().int().min(1),
    manifestSha256: Sha256,
    /** the signed manifest (base64 of manifest.json and of its .sig), verified like a downloaded one: the agent skips two GETs */
    manifest: z.strictObject({ bytes: base64(MAX_INLINE_MANIFEST), sig: base64(4096) }).optional(),
    /** the fleet config version to run it with: the agent reads and verifies it (absent: the running config stays; null: none) */
    config: BoundConfig.nullable().optional(),
  }),
  /** back to the previous release on disk, or to an explicit older one; with `config`, to that config version */
  z.strictObject({ kind: z.literal('rollback'), version: VersionName.optional(), manifestSha256: Sha256.optional(), config: BoundConfig.nullable().optional() }),
  z.strictObject({ kind: z.literal('report') }),
]);
export type CommandAction = z.infer<typeof CommandAction>;

const v = z.literal(PROTOCOL_VERSION);

/** A `log-lines` frame carries at most this many lines, of at most this many characters in all: far under MAX_FRAME_BYTES. */
export const MAX_LOG_FRAME_LINES = 500;
export const MAX_LOG_FRAME_CHARS = 256 * 1024;
const LogLines = z
  .array(z.string().max(MAX_LINE_BYTES))
  .max(MAX_LOG_FRAME_LINES)
  .refine((l) => l.reduce((n, x) => n + x.length, 0) <= MAX_LOG_FRAME_CHARS, `at most ${MAX_LOG_FRAME_CHARS} characters of lines a frame`);

/** Every frame either side sends: one discriminated union. */
export const Message = z.discriminatedUnion('type', [
  /**
   * agent → controller, first frame of a connection; `identity` proves the agent holds the key its
   * instance id is pinned to; `results` are the latest command outcomes, so nothing done is reported lost
   */
  z.strictObject({ type: z.literal('hello'), v, identity: AgentIdentity, report: AgentReport, results: z.array(CommandResult).max(50) }),
  z.strictObject({ type: z.literal('report'), v, report: AgentReport }),
  /** controller → agent */
  z.strictObject({ type: z.literal('command'), v, id, instanceId: id, app: AppName, action: CommandAction }),
  /** agent → controller: a command was accepted (queued or started) or reached an install step */
  z.strictObject({ type: z.literal('progress'), v, commandId: id, stage: z.string().max(32), bytes: z.number().int().min(0).optional(), total: z.number().int().min(0).optional() }),
  z.strictObject({ type: z.literal('result'), v, result: CommandResult }),
  /**
   * Log streams (agents from 0.3.0 on): the controller asks for a process's (or every process's) last
   * `lines` and, with `follow`, the new ones until it sends `log-stop`; the agent answers `log-start`
   * (the processes it reads), then `log-lines` batches, then `log-end` (with `error` when it failed or refused).
   */
  z.strictObject({ type: z.literal('log-request'), v, id, process: ProcessName.optional(), lines: z.number().int().min(0).max(MAX_LOG_LINES), follow: z.boolean() }),
  z.strictObject({ type: z.literal('log-stop'), v, id }),
  z.strictObject({ type: z.literal('log-start'), v, id, processes: z.array(ProcessName).max(64) }),
  z.strictObject({ type: z.literal('log-lines'), v, id, process: ProcessName, lines: LogLines }),
  z.strictObject({ type: z.literal('log-end'), v, id, error: ErrorInfo.optional() }),
  /** either way: the peer's frame (or command, when `commandId` is set) was refused */
  z.strictObject({ type: z.literal('error'), v, error: ErrorInfo, commandId: id.optional() }),
]);
export type Message = z.infer<typeof Message>;
export type MessageOf<T extends Message['type']> = Extract<Message, { type: T }>;

const FROM_AGENT = new Set<Message['type']>(['hello', 'report', 'progress', 'result', 'error', 'log-start', 'log-lines', 'log-end']);
const FROM_CONTROLLER = new Set<Message['type']>(['command', 'error', 'log-request', 'log-stop']);

/** A message as written by its sender: the protocol version is filled in by `frame`. */
export type Outgoing = Message extends infer M ? (M extends Message ? Omit<M, 'v'> : never) : never;

/** Builds a frame with the protocol version filled in. */
export function frame(msg: Outgoing): string {
  return JSON.stringify({ ...msg, v: PROTOCOL_VERSION });
}

/**
 * Parses one received frame, checked in order: size, JSON, protocol version, shape, direction.
 * Throws KILN_FRAME_TOO_LARGE, KILN_FRAME_INVALID or KILN_PROTOCOL_VERSION.
 */
export function parseFrame(data: Buffer | ArrayBuffer | Buffer[] | string, from: 'agent' | 'controller'): Message {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
  if (buf.length > MAX_FRAME_BYTES) throw new KilnError('KILN_FRAME_TOO_LARGE', `a frame of ${buf.length} bytes is over the limit of ${MAX_FRAME_BYTES}`);
  let raw: unknown;
  try {
    raw = JSON.parse(buf.toString('utf8'));
  } catch (cause) {
    throw new KilnError('KILN_FRAME_INVALID', `a frame is not JSON: ${(cause as Error).message}`, { cause });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new KilnError('KILN_FRAME_INVALID', 'a frame is not a JSON object');
  const version = (raw as { v?: unknown }).v;
  if (version !== PROTOCOL_VERSION) {
    throw new KilnError('KILN_PROTOCOL_VERSION', `a frame speaks protocol version ${JSON.stringify(version)}; this side speaks ${PROTOCOL_VERSION} (upgrade the older side)`);
  }
  const parsed = Message.safeParse(raw);
  if (!parsed.success) throw new KilnError('KILN_FRAME_INVALID', `a ${describeType(raw)} frame is invalid: ${formatZodError(parsed.error)}`);
  const allowed = from === 'agent' ? FROM_AGENT : FROM_CONTROLLER;
  if (!allowed.has(parsed.data.type)) throw new KilnError('KILN_FRAME_INVALID', `a ${from} does not send "${parsed.data.type}" frames`);
  return parsed.data;
}

function describeType(raw: object): string {
  const t = (raw as { type?: unknown }).type;
  return typeof t === 'string' ? JSON.stringify(t.slice(0, 40)) : 'typeless';
}
