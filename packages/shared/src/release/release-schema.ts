import { z } from 'zod';
import { AppName, ChannelName, VersionName } from './names.js';

/** A sha256 digest as kiln writes it everywhere: 64 lower-case hex digits. */
export const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'a lower-case hex sha256');

/** A release as fleets, agents and images name it: its version, its seq and its manifest's digest. */
export const ReleaseRef = z.strictObject({ version: VersionName, seq: z.number().int().min(1), manifestSha256: Sha256 });
export type ReleaseRef = z.infer<typeof ReleaseRef>;

const relPath = z.string().min(1).max(4096);

export const ServiceSpec = z.strictObject({
  /** argv; run with cwd = the current release */
  command: z.array(z.string().min(1)).min(1),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).default({}),
  /** the port the app listens on; given to it as PORT */
  port: z.number().int().min(1).max(65535).optional(),
  stopTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
});
export type ServiceSpec = z.infer<typeof ServiceSpec>;

export const HealthSpec = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('http'),
    path: z.string().startsWith('/').default('/'),
    /** defaults to service.port */
    port: z.number().int().min(1).max(65535).optional(),
    timeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    intervalMs: z.number().int().min(10).max(60_000).default(100),
  }),
  z.strictObject({
    type: z.literal('command'),
    command: z.array(z.string().min(1)).min(1),
    timeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    intervalMs: z.number().int().min(10).max(60_000).default(200),
  }),
  z.strictObject({ type: z.literal('none') }),
]);
export type HealthSpec = z.infer<typeof HealthSpec>;

/** kiln.json at the top of an app tree: how the app runs and how its health is checked. */
export const AppSpec = z.strictObject({
  service: ServiceSpec,
  health: HealthSpec.default({ type: 'none' }),
  /** symbolic links are refused unless the release allows them; even then they must stay inside it */
  allowLinks: z.boolean().default(false),
});
export type AppSpec = z.infer<typeof AppSpec>;

export const FileEntry = z.discriminatedUnion('type', [
  z.strictObject({ path: relPath, type: z.literal('file'), size: z.number().int().min(0), sha256: Sha256, mode: z.number().int().min(0).max(0o777) }),
  z.strictObject({ path: relPath, type: z.literal('dir'), mode: z.number().int().min(0).max(0o777) }),
  z.strictObject({ path: relPath, type: z.literal('symlink'), target: z.string().min(1).max(4096) }),
]);
export type FileEntry = z.infer<typeof FileEntry>;

export const Manifest = z.strictObject({
  schema: z.literal(1),
  app: AppName,
  version: VersionName,
  /** grows strictly per app with every published release */
  seq: z.number().int().min(1),
  createdAt: z.string(),
  artifact: z.strictObject({ key: z.string().min(1), sha256: Sha256, size: z.number().int().min(1) }),
  /** sum of file sizes */
  unpackedSize: z.number().int().min(0),
  /** each path once: an install keys the list by path, so a second entry would silently win over the first */
  files: z.array(FileEntry).superRefine((files, ctx) => {
    const seen = new Set<string>();
    for (const [i, f] of files.entries()) {
      if (seen.has(f.path)) ctx.addIssue({ code: 'custom', path: [i, 'path'], message: `${JSON.stringify(f.path)} is listed twice` });
      seen.add(f.path);
    }
  }),
  allowLinks: z.boolean(),
  service: ServiceSpec,
  health: HealthSpec,
});
export type Manifest = z.infer<typeof Manifest>;

export const ChannelPointer = z.strictObject({
  schema: z.literal(1),
  app: AppName,
  channel: ChannelName,
  version: VersionName,
  /** grows strictly per app and channel with every promote; an older pointer is a replay */
  seq: z.number().int().min(1),
  manifestSha256: Sha256,
  createdAt: z.string(),
  expires: z.string(),
});
export type ChannelPointer = z.infer<typeof ChannelPointer>;

export const SignatureFile = z.strictObject({
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  alg: z.literal('ed25519'),
  signature: z.string().min(1),
});
export type SignatureFile = z.infer<typeof SignatureFile>;
