import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { KilnError, ifKilnError } from '../errors/kiln-error.js';
import { ifMissing } from '../system/fs-errors.js';
import { checkName } from './names.js';
import { packRelease } from './release-pack.js';
import { AppSpec, contentListing, Manifest, ManifestV2 } from './release-schema.js';
import { knownBlobs, storeContent, type KnownBlob } from './release-objects.js';
import { formatZodError } from '../errors/format-zod-error.js';
import { readJsonFile } from '../system/json-file.js';
import { phaseStopwatch } from '../system/phase-stopwatch.js';
import type { ReleaseStore } from './release-store.js';
import { DEFAULT_LIMITS, extractTarGz, type ExtractLimits } from './safe-extract.js';
import { scanTree } from './scan-tree.js';
import { sha256Hex, signBytes, type PrivateKey } from './signing.js';

export interface PublishOptions {
  store: ReleaseStore;
  app: string;
  version: string;
  /** an app directory, or a .tar.gz of one */
  source: string;
  key: PrivateKey;
  /** 2 (default): contents by sha256, only new ones uploaded; 1: one .tar.gz, for agents before 0.4.0 */
  format?: 1 | 2;
  /** replaces kiln.json fields (from CLI flags) */
  spec?: { command?: string[]; port?: number; env?: Record<string, string>; healthPath?: string };
  limits?: Partial<ExtractLimits>;
  log: Logger;
  now?: () => Date;
  onPhase?: (phase: 'scan' | 'pack' | 'upload' | 'sign', detail?: string) => void;
  /** bytes uploaded so far, of the total to upload */
  onUploadProgress?: (loaded: number, total: number) => void;
}

export interface PublishResult {
  manifest: Manifest;
  manifestSha256: string;
  /** stored bytes uploaded, and those the bucket already held (format 2: contents of earlier releases) */
  uploadedBytes: number;
  skippedBytes: number;
  timings: Record<string, number>;
}

/** Reads kiln.json from the tree (when there is one) and applies the flag overrides; an error names the field at fault. */
export async function readAppSpec(dir: string, over: PublishOptions['spec'] = {}): Promise<AppSpec> {
  const raw = (await readJsonFile(path.join(dir, 'kiln.json'), z.record(z.string(), z.unknown()), { code: 'KILN_APP_SPEC_INVALID', unreadable: 'KILN_APP_SPEC_INVALID' })) ?? {};
  // `processes` with a `web` is the same as `service` + `health` for web and `processes` for the others.
  const procs = raw.processes && typeof raw.processes === 'object' ? { ...(raw.processes as Record<string, unknown>) } : undefined;
  let web: Record<string, unknown> | undefined;
  if (procs) {
    if ('service' in raw) throw invalid('give either "service" (one process) or "processes" (several, one of them "web"), not both');
    if (!procs.web || typeof procs.web !== 'object') throw invalid('processes.web is missing: the main process, the one the health gate and the balancer talk to, is named "web"');
    ({ health: raw.health, ...web } = procs.web as Record<string, unknown>);
    delete procs.web;
  }
  const service = { ...(web ?? (raw.service as object | undefined)), ...(over.command ? { command: over.command } : {}), ...(over.port ? { port: over.port } : {}), ...(over.env ? { env: over.env } : {}) };
  const health = over.healthPath ? { type: 'http', path: over.healthPath } : raw.health;
  if (!('command' in service)) throw invalid('the release does not say how the app runs: add a kiln.json with "service": {"command": [...]} to the app tree, or pass --command');
  const spec: Record<string, unknown> = { ...raw, service, health };
  if (procs) spec.processes = Object.keys(procs).length ? procs : undefined;
  if (spec.health === undefined) delete spec.health;
  if (spec.processes === undefined) delete spec.processes;
  const parsed = AppSpec.safeParse(spec);
  if (!parsed.success) throw invalid(`kiln.json (with flags) is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

const invalid = (message: string) => new KilnError('KILN_APP_SPEC_INVALID', message);

/** What is signed must be what every reader accepts: checked by the same schema before anything is uploaded. */
function checkManifest(manifest: Manifest): void {
  const checked = Manifest.safeParse(manifest);
  if (!checked.success) throw new KilnError('KILN_MANIFEST_INVALID', `the manifest of ${manifest.app} ${manifest.version} would be invalid: ${formatZodError(checked.error)}`);
}

/**
 * What the bucket holds of the app: the highest seq among its published releases (0 when none) and
 * the contents format 2 manifests stored (what a push need not upload again). A version without a
 * manifest yet (a push under way) has none; a manifest that cannot be read fails it, or the new seq
 * could be lower.
 */
async function readPublished(store: ReleaseStore, app: string): Promise<{ seq: number; known: Map<string, KnownBlob> }> {
  let max = 0;
  const v2: ManifestV2[] = [];
  const versions = await store.listVersions(app);
  const manifest = (v: string) => ifKilnError(store.getManifest(app, v), ['KILN_RELEASE_NOT_FOUND'], undefined);
  for (let i = 0; i < versions.length; i += 16) {
    const batch = await Promise.all(versions.slice(i, i + 16).map(manifest));
    for (const obj of batch) {
      const raw = obj ? (JSON.parse(obj.bytes.toString('utf8')) as { seq?: unknown; schema?: unknown }) : undefined;
      if (typeof raw?.seq === 'number' && raw.seq > max) max = raw.seq;
      // Only a manifest that parses is trusted to say where a content is: a bad one costs an upload, nothing more.
      const parsed = raw?.schema === 2 ? ManifestV2.safeParse(raw) : undefined;
      if (parsed?.success) v2.push(parsed.data);
    }
  }
  return { seq: max, known: knownBlobs(v2) };
}

/** `kiln release push`: scan, pack, sign, upload. Releases are immutable: an existing version is refused. */
export async function publishRelease(opts: PublishOptions): Promise<PublishResult> {
  const app = checkName('app', opts.app);
  const version = checkName('version', opts.version);
  const log = opts.log.child({ module: 'publish', app, version });
  const timings: Record<string, number> = {};
  const watch = phaseStopwatch('scan');
  const nextPhase = (next?: string) => {
    const { name, ms } = watch.next(next);
    timings[name] = ms;
  };
  if (await opts.store.manifestExists(app, version)) throw new KilnError('KILN_RELEASE_EXISTS', `${app} ${version} was already published: releases are immutable, push a new version`);

  const work = await mkdtemp(path.join(tmpdir(), 'kiln-push-'));
  try {
    let dir = path.resolve(opts.source);
    const st = await ifMissing(stat(dir), undefined);
    if (!st) throw new KilnError('KILN_USAGE', `${opts.source} does not exist`);
    opts.onPhase?.('scan', dir);
    if (st.isFile()) {
      // A given tarball is unpacked with every refusal an install applies, then packed the kiln way.
      dir = path.join(work, 'tree');
      await mkdir(dir);
      await extractTarGz(createReadStream(opts.source), { dest: dir, limits: { ...DEFAULT_LIMITS, ...opts.limits }, allowLinks: true, ignoreOwners: true, fsync: false });
    }
    const spec = await readAppSpec(dir, opts.spec);
    const files = await scanTree(dir, { allowLinks: spec.allowLinks });
    const shadowed = spec.persist?.find((name) => files.some((f) => f.path === name));
    if (shadowed) throw invalid(`persist: "${shadowed}" is also a path in the release; a persistent directory is linked into every release under its name, so the tree must not have one`);
    nextPhase('pack');
    opts.onPhase?.('pack');
    const published = await readPublished(opts.store, app);
    const common = {
      app,
      version,
      seq: published.seq + 1,
      createdAt: (opts.now ?? (() => new Date()))().toISOString(),
      unpackedSize: files.reduce((n, f) => n + (f.type === 'file' ? f.size : 0), 0),
      files,
      allowLinks: spec.allowLinks,
      service: spec.service,
      health: spec.health,
      ...(spec.processes ? { processes: spec.processes } : {}),
      ...(spec.hooks ? { hooks: spec.hooks } : {}),
      ...(spec.persist?.length ? { persist: spec.persist } : {}),
    };
    let manifest: Manifest;
    let uploadedBytes: number;
    let skippedBytes = 0;
    if ((opts.format ?? 2) === 1) {
      const artifactFile = path.join(work, 'artifact.tar.gz');
      const artifact = await packRelease(dir, files, artifactFile);
      nextPhase('upload');
      manifest = { schema: 1, ...common, artifact: { key: opts.store.artifactKey(app, version), sha256: artifact.sha256, size: artifact.size } };
      checkManifest(manifest);
      opts.onPhase?.('upload', `${artifact.size} bytes`);
      await opts.store.putArtifact(manifest.artifact.key, createReadStream(artifactFile), (n) => opts.onUploadProgress?.(n, artifact.size));
      uploadedBytes = artifact.size;
    } else {
      nextPhase('upload');
      opts.onPhase?.('upload', `contents of ${files.length} entries, only those the bucket lacks`);
      const stored = await storeContent({ store: opts.store, app, dir, files, known: published.known, work: path.join(work, 'objects'), onUpload: (n) => opts.onUploadProgress?.(n, n) });
      manifest = { schema: 2, ...common, content: { treeSha256: sha256Hex(Buffer.from(contentListing(files))), ...stored.content } };
      checkManifest(manifest);
      uploadedBytes = stored.uploadedBytes;
      skippedBytes = stored.skippedBytes;
    }
    nextPhase('sign');
    opts.onPhase?.('sign');
    // Format 2 lists every file twice (path and content): compact, it is a third smaller.
    const bytes = Buffer.from((manifest.schema === 1 ? JSON.stringify(manifest, null, 2) : JSON.stringify(manifest)) + '\n');
    await opts.store.putManifest(app, version, { bytes, sig: signBytes(bytes, opts.key) });
    nextPhase();
    log.info({ seq: manifest.seq, format: manifest.schema, uploadedBytes, skippedBytes, files: files.length, timings }, 'release published');
    return { manifest, manifestSha256: sha256Hex(bytes), uploadedBytes, skippedBytes, timings };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
