import { z } from 'zod';
import { AppName, ChannelName, FleetName, ProcessName, VersionName } from './names.js';

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

/** A process beside the main one (`worker`): run like it, checked by its own health check if it has one, and by staying up. */
export const ProcessSpec = ServiceSpec.extend({ health: HealthSpec.default({ type: 'none' }) });
export type ProcessSpec = z.infer<typeof ProcessSpec>;

/** A lifecycle hook: a command run by the install routine as the app's user, with the app's environment. */
export const HookSpec = z.strictObject({
  command: z.array(z.string().min(1)).min(1),
  /** killed (its whole process group) past this */
  timeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
  /** also run while baking an image (default false: a builder must not touch live data such as a database) */
  onBake: z.boolean().default(false),
});
export type HookSpec = z.infer<typeof HookSpec>;

export const HookName = z.enum(['beforeStart', 'validate', 'beforeStop']);
export type HookName = z.infer<typeof HookName>;

export const Hooks = z.strictObject({
  /** in the new release's directory before the swap (migrations); failing, nothing is swapped */
  beforeStart: HookSpec.optional(),
  /** after the health gate, before commit (a smoke test); failing, the routine swaps back */
  validate: HookSpec.optional(),
  /** in the old release's directory before its processes stop (flush); failing, it is reported and the install goes on */
  beforeStop: HookSpec.optional(),
});
export type Hooks = z.infer<typeof Hooks>;

/** A persistent directory's name: a directory under the app's `data/`, linked into every release under that name. */
export const PersistName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a directory name: lower-case letters, digits, "_" and "-", at most 63 characters');

const persistList = z
  .array(PersistName)
  .max(16)
  .refine((l) => new Set(l).size === l.length, 'a directory is listed twice');

/** What kiln.json adds to how the app runs: more processes, hooks, persistent directories. */
const AppContract = {
  /** processes beside the main one (the main one is `service`, named `web`) */
  processes: z
    .record(ProcessName, ProcessSpec)
    .refine((r) => !('web' in r), 'web is the main process (`service`), not one of the others')
    .optional(),
  hooks: Hooks.optional(),
  persist: persistList.optional(),
};

/**
 * kiln.json at the top of an app tree: how the app runs and how its health is checked. Either
 * `service` (+ `health`) for an app of one process, or `processes` with a `web` among them.
 */
export const AppSpec = z.strictObject({
  service: ServiceSpec,
  health: HealthSpec.default({ type: 'none' }),
  /** symbolic links are refused unless the release allows them; even then they must stay inside it */
  allowLinks: z.boolean().default(false),
  ...AppContract,
});
export type AppSpec = z.infer<typeof AppSpec>;

/** Every process of a release by name: the main one as `web`, then the others. */
export function releaseProcesses(m: { service: ServiceSpec; health: HealthSpec; processes?: Record<string, ProcessSpec> | undefined }): Record<string, ProcessSpec> {
  return { web: { ...m.service, health: m.health }, ...m.processes };
}

export const FileEntry = z.discriminatedUnion('type', [
  z.strictObject({ path: relPath, type: z.literal('file'), size: z.number().int().min(0), sha256: Sha256, mode: z.number().int().min(0).max(0o777) }),
  z.strictObject({ path: relPath, type: z.literal('dir'), mode: z.number().int().min(0).max(0o777) }),
  z.strictObject({ path: relPath, type: z.literal('symlink'), target: z.string().min(1).max(4096) }),
]);
export type FileEntry = z.infer<typeof FileEntry>;

/** Each path once: an install keys the list by path, so a second entry would silently win over the first. */
const fileList = z.array(FileEntry).superRefine((files, ctx) => {
  const seen = new Set<string>();
  for (const [i, f] of files.entries()) {
    if (seen.has(f.path)) ctx.addIssue({ code: 'custom', path: [i, 'path'], message: `${JSON.stringify(f.path)} is listed twice` });
    seen.add(f.path);
  }
});

/** What every manifest says, whatever its format. */
const ManifestCommon = {
  app: AppName,
  version: VersionName,
  /** grows strictly per app with every published release */
  seq: z.number().int().min(1),
  createdAt: z.string(),
  /** sum of file sizes */
  unpackedSize: z.number().int().min(0),
  files: fileList,
  allowLinks: z.boolean(),
  service: ServiceSpec,
  health: HealthSpec,
  // Absent from a release that has none, so a manifest of one process reads as it always did.
  ...AppContract,
};

/** Format 1: the whole tree in one .tar.gz. */
export const ManifestV1 = z.strictObject({
  schema: z.literal(1),
  artifact: z.strictObject({ key: z.string().min(1), sha256: Sha256, size: z.number().int().min(1) }),
  ...ManifestCommon,
});

/** A content object's name under `objects/<app>/`: a large file's sha256, or `pack-` and a pack's sha256. */
export const ObjectName = z.string().regex(/^(pack-)?[0-9a-f]{64}$/, 'a content object name: a sha256, or pack- and a sha256');

/** Where one file content (by its sha256) is stored: bytes [offset, offset + length) of an object, compressed or not. */
export const Blob = z.strictObject({
  /** index into `content.objects` */
  object: z.number().int().min(0),
  offset: z.number().int().min(0),
  length: z.number().int().min(1),
  encoding: z.enum(['gzip', 'none']),
});
export type Blob = z.infer<typeof Blob>;

/** Format 2 (delta): every file content stored once in the bucket, addressed by its sha256 (docs/release-format.md). */
export const ManifestV2 = z
  .strictObject({
    schema: z.literal(2),
    content: z.strictObject({
      /** sha256 of the tree's listing (contentListing): two releases of one tree have the same */
      treeSha256: Sha256,
      /** the objects this release reads, by name, with their size */
      objects: z.array(z.strictObject({ name: ObjectName, size: z.number().int().min(1) })),
      /** every file content of the release: where it is stored */
      blobs: z.record(Sha256, Blob),
    }),
    ...ManifestCommon,
  })
  .superRefine((m, ctx) => {
    const issue = (message: string) => ctx.addIssue({ code: 'custom', path: ['content'], message });
    for (const [sha, b] of Object.entries(m.content.blobs)) {
      const obj = m.content.objects[b.object];
      if (!obj) issue(`blob ${sha.slice(0, 12)}… names object ${b.object}, but there are ${m.content.objects.length}`);
      else if (b.offset + b.length > obj.size) issue(`blob ${sha.slice(0, 12)}… ends at byte ${b.offset + b.length}, past the ${obj.size} bytes of ${obj.name}`);
    }
    for (const f of m.files) {
      if (f.type !== 'file') continue;
      const b = m.content.blobs[f.sha256];
      if (!b) issue(`${f.path} has no stored content (sha256 ${f.sha256.slice(0, 12)}…)`);
      else if (b.encoding === 'none' && b.length !== f.size) issue(`${f.path} is ${f.size} bytes but its uncompressed content is stored as ${b.length}`);
    }
  });

export const Manifest = z.discriminatedUnion('schema', [ManifestV1, ManifestV2]);
export type Manifest = z.infer<typeof Manifest>;
export type ManifestV1 = z.infer<typeof ManifestV1>;
export type ManifestV2 = z.infer<typeof ManifestV2>;

/** The release's content digest: the artifact's sha256 (format 1) or the tree listing's (format 2). */
export const contentSha256 = (m: Manifest): string => (m.schema === 1 ? m.artifact.sha256 : m.content.treeSha256);

/** Bytes the release occupies in the bucket beside its manifest (shared objects counted whole once for format 2's blobs). */
export const storedSize = (m: Manifest): number => (m.schema === 1 ? m.artifact.size : Object.values(m.content.blobs).reduce((n, b) => n + b.length, 0));

/** The listing a format 2 tree digest is taken over: one line per entry, in manifest order. */
export const contentListing = (files: FileEntry[]): string =>
  files.map((f) => (f.type === 'file' ? `file ${f.mode.toString(8)} ${f.sha256} ${f.path}` : f.type === 'dir' ? `dir ${f.mode.toString(8)} ${f.path}` : `symlink ${f.target} ${f.path}`)).join('\n') + '\n';

/**
 * A fleet config version bound to a release (docs/config.md): the fleet whose config it is, its seq
 * and the sha256 of its signed document. A channel pointer and an install command carry it, so a
 * host gets the release and the config it runs with from one signed object or one command.
 */
export const BoundConfig = z.strictObject({ fleet: FleetName, seq: z.number().int().min(1), sha256: Sha256 });
export type BoundConfig = z.infer<typeof BoundConfig>;

export const ChannelPointer = z.strictObject({
  schema: z.literal(1),
  app: AppName,
  channel: ChannelName,
  version: VersionName,
  /** grows strictly per app and channel with every promote; an older pointer is a replay */
  seq: z.number().int().min(1),
  manifestSha256: Sha256,
  /** the fleet config the release runs with (absent: the config a host runs stays; pointers before configs have none) */
  config: BoundConfig.optional(),
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
