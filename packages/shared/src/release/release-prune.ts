import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { parseJson } from '../system/json-file.js';
import { runPool } from '../system/run-pool.js';
import { checkName, isValidName } from './names.js';
import { ChannelPointer, Manifest, SignatureFile } from './release-schema.js';
import type { ReleaseStore } from './release-store.js';

/** Releases kept besides those something names: room for a rollback or two past what the channels point to. */
export const DEFAULT_KEEP = 5;

/** Manifests read and objects deleted at once: S3 answers each in tens of ms, one at a time a big bucket takes minutes. */
const CONCURRENCY = 16;

export interface PruneOptions {
  /** the N highest-seq releases are kept (at least 1: the newest may be pushed and not promoted yet, and the next seq grows from it) */
  keep?: number;
  /** versions the caller must keep (fleets' desired releases, images' releases): with why, or a set ("protected by caller") */
  protect?: ReadonlyMap<string, string> | ReadonlySet<string>;
  /** objects uploaded less than this long ago stay (a push may be under way: contents go up before the manifest); default 1 h */
  graceMs?: number;
  now?: () => number;
}

export interface KeptRelease {
  version: string;
  /** null: its manifest could not be read */
  seq: number | null;
  format: 1 | 2 | null;
  why: string[];
}

export interface RemovedRelease {
  version: string;
  seq: number;
  format: 1 | 2;
  why: string;
  /** its artifact (format 1); a format 2 release's contents are counted with the objects */
  bytes: number;
}

export interface PrunePlan {
  app: string;
  keep: KeptRelease[];
  remove: RemovedRelease[];
  /** content objects no kept release names */
  objects: Array<{ name: string; size: number }>;
  /** bytes freed: those objects plus the removed format 1 artifacts */
  bytes: number;
  /** why no object is removed at all (a kept manifest kiln cannot read might name any), else null */
  objectsHeld: string | null;
  /** versions a channel or the caller names that the bucket does not hold */
  missing: Array<{ version: string; why: string }>;
}

type ReadRelease = { version: string; manifest: Manifest; problem: string | null } | { version: string; manifest: null; problem: string; hidesObjects: boolean };

/**
 * What `kiln release prune` deletes: every release that is not among the `keep` highest seqs, on
 * no channel and not protected by the caller; then every content object no kept format 2 manifest
 * names. A release whose manifest cannot be read is kept and said so; when such a manifest might
 * name objects, none is removed. A channel pointer that cannot be read refuses the whole plan.
 */
export async function planPrune(store: ReleaseStore, app: string, opts: PruneOptions = {}): Promise<PrunePlan> {
  checkName('app', app);
  const keep = opts.keep ?? DEFAULT_KEEP;
  if (!Number.isInteger(keep) || keep < 1) throw new KilnError('KILN_USAGE', `keep ${keep}: a whole number of 1 or more (the newest release is always kept)`);
  const versions = await store.listVersions(app);
  const releases = await readAll(versions, (v) => readRelease(store, app, v));
  const channels = await channelVersions(store, app);

  const why = new Map<string, string[]>();
  const add = (version: string, reason: string) => why.set(version, [...(why.get(version) ?? []), reason]);
  for (const [channel, version] of channels) add(version, `channel ${channel}`);
  const protect = opts.protect ?? new Set<string>();
  for (const version of protect.keys()) add(version, 'get' in protect ? (protect.get(version) ?? 'protected by caller') : 'protected by caller');
  const readable = releases.filter((r) => r.manifest).sort((a, b) => b.manifest!.seq - a.manifest!.seq || b.version.localeCompare(a.version));
  readable.slice(0, keep).forEach((r) => add(r.version, `newest ${keep}`));
  for (const r of releases) if (r.problem) add(r.version, `${r.problem}: kept, prune never deletes what it cannot read`);

  const held = new Set(versions);
  const missing = [...why].filter(([v]) => !held.has(v)).map(([version, reasons]) => ({ version, why: reasons.join(', ') }));
  const keepList: KeptRelease[] = [];
  const remove: RemovedRelease[] = [];
  for (const r of releases) {
    const m = r.manifest;
    const reasons = why.get(r.version);
    if (reasons) keepList.push({ version: r.version, seq: m?.seq ?? null, format: m?.schema ?? null, why: reasons });
    else if (m) remove.push({ version: r.version, seq: m.seq, format: m.schema, why: `older than the newest ${keep}; no channel names it, nothing protects it`, bytes: m.schema === 1 ? m.artifact.size : 0 });
  }
  const bySeq = <T extends { seq: number | null; version: string }>(a: T, b: T) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.version.localeCompare(b.version);
  keepList.sort(bySeq);
  remove.sort(bySeq);

  const hiding = releases.filter((r) => !r.manifest && r.hidesObjects).map((r) => r.version);
  const objectsHeld = hiding.length ? `the manifest of ${hiding.join(', ')} cannot be read, so which objects it needs is unknown` : null;
  let objects: PrunePlan['objects'] = [];
  if (!objectsHeld) {
    const named = namedObjects(releases.filter((r) => why.has(r.version)).map((r) => r.manifest));
    const youngerThan = (opts.now ?? Date.now)() - (opts.graceMs ?? 3_600_000);
    objects = (await store.listObjects(app))
      .filter((o) => !named.has(o.name) && (o.modifiedAt === undefined || o.modifiedAt < youngerThan))
      .map((o) => ({ name: o.name, size: o.size }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }
  const bytes = objects.reduce((n, o) => n + o.size, 0) + remove.reduce((n, r) => n + r.bytes, 0);
  return { app, keep: keepList, remove, objects, bytes, objectsHeld, missing };
}

export interface PruneProgress {
  phase: 'releases' | 'objects';
  done: number;
  total: number;
}

export interface PruneResult {
  releases: string[];
  objects: number;
  bytes: number;
  /** releases of the plan left in place because a channel named them by the time they were due, and objects a release published since the plan names */
  spared: { releases: string[]; objects: number };
}

/**
 * Carries a plan out: the releases first (each one's manifest first, so a release is gone before
 * what it names), then the objects. Channels are read again just before, and versions published
 * since the plan are read, so a promote or a push that finished meanwhile keeps what it needs.
 * Known limit: a push still uploading (no manifest yet) may reuse an object being deleted; run
 * prune from the one place that pushes.
 */
export async function applyPrune(store: ReleaseStore, app: string, plan: PrunePlan, onProgress?: (p: PruneProgress) => void): Promise<PruneResult> {
  if (plan.app !== app) throw new Error(`a prune plan of ${plan.app} applied to ${app}`);
  const nowOnChannels = new Set((await channelVersions(store, app)).values());
  const releases = plan.remove.filter((r) => !nowOnChannels.has(r.version)).map((r) => r.version);
  let done = 0;
  await runPool(releases, CONCURRENCY, async (version) => {
    await store.removeRelease(app, version);
    onProgress?.({ phase: 'releases', done: ++done, total: releases.length });
  });

  // A release spared now, or published since the plan, keeps the objects it names.
  const planned = new Set([...plan.keep, ...plan.remove].map((r) => r.version));
  const spared = plan.remove.map((r) => r.version).filter((v) => !releases.includes(v));
  const later = await readAll([...spared, ...(await store.listVersions(app)).filter((v) => !planned.has(v))], (v) => readRelease(store, app, v));
  const hiding = later.some((r) => !r.manifest && r.hidesObjects);
  const named = namedObjects(later.map((r) => r.manifest));
  const objects = hiding ? [] : plan.objects.filter((o) => !named.has(o.name));
  done = 0;
  await runPool(objects, CONCURRENCY, async (o) => {
    await store.removeObject(store.objectKey(app, o.name));
    onProgress?.({ phase: 'objects', done: ++done, total: objects.length });
  });
  const removedArtifacts = plan.remove.filter((r) => releases.includes(r.version)).reduce((n, r) => n + r.bytes, 0);
  return {
    releases,
    objects: objects.length,
    bytes: removedArtifacts + objects.reduce((n, o) => n + o.size, 0),
    spared: { releases: spared, objects: plan.objects.length - objects.length },
  };
}

async function readAll<T>(versions: string[], read: (v: string) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(versions.length);
  await runPool(versions, CONCURRENCY, async (v, i) => void (out[i] = await read(v)));
  return out;
}

function namedObjects(manifests: Array<Manifest | null>): Set<string> {
  const named = new Set<string>();
  for (const m of manifests) if (m?.schema === 2) for (const o of m.content.objects) named.add(o.name);
  return named;
}

/** A version's manifest, or why it cannot be read: such a release is kept whatever it is. */
async function readRelease(store: ReleaseStore, app: string, version: string): Promise<ReadRelease> {
  if (!isValidName('version', version)) return { version, manifest: null, problem: 'not a version name kiln writes', hidesObjects: false };
  let obj;
  try {
    obj = await store.getManifest(app, version);
  } catch (err) {
    if (!isKilnError(err, 'KILN_RELEASE_NOT_FOUND')) throw err;
    // A manifest is written after its signature and its contents: without one it is a push under way or stopped, and names nothing yet.
    if (!(await store.manifestExists(app, version))) return { version, manifest: null, problem: 'no manifest (a push under way, or one that stopped)', hidesObjects: false };
    return { version, manifest: null, problem: 'unsigned (no manifest.json.sig)', hidesObjects: true };
  }
  let manifest: Manifest;
  try {
    manifest = parseJson(obj.bytes.toString('utf8'), Manifest, { code: 'KILN_MANIFEST_INVALID', what: `the manifest of ${app} ${version}` });
  } catch (err) {
    if (!isKilnError(err, 'KILN_MANIFEST_INVALID')) throw err;
    // A newer kiln's format, or damage: either may name any object.
    return { version, manifest: null, problem: 'its manifest does not parse', hidesObjects: true };
  }
  if (manifest.app !== app || manifest.version !== version) return { version, manifest, problem: `its manifest describes ${manifest.app} ${manifest.version}` };
  if (!SignatureFile.safeParse(safeJson(obj.sig)).success) return { version, manifest, problem: 'unsigned (its signature does not parse)' };
  return { version, manifest, problem: null };
}

function safeJson(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}

/**
 * channel → the version its pointer names. A pointer that cannot be read might name any release, so
 * prune refuses to run; one removed while listed (a bake's channel, once the bake ends) names none.
 */
async function channelVersions(store: ReleaseStore, app: string): Promise<Map<string, string>> {
  const channels = await store.listChannels(app);
  const found = new Map<string, string>();
  await runPool(channels, CONCURRENCY, async (channel) => {
    const what = `the channel pointer ${app}/${channel}`;
    const fix = `\`kiln release channel ${app} ${channel}\` shows it; point it at a release again (\`kiln release promote ${app} VERSION --channel ${channel}\`), then prune`;
    let obj;
    try {
      obj = await store.getPointer(app, channel);
    } catch (err) {
      if (!isKilnError(err, 'KILN_RELEASE_NOT_FOUND')) throw err;
      if (!(await store.listChannels(app)).includes(channel)) return;
      throw new KilnError('KILN_POINTER_INVALID', `${what} has no signature: prune cannot tell which release it names, and deletes nothing; ${fix}`, { cause: err });
    }
    let pointer: ChannelPointer;
    try {
      pointer = parseJson(obj.bytes.toString('utf8'), ChannelPointer, { code: 'KILN_POINTER_INVALID', what });
    } catch (err) {
      if (!isKilnError(err, 'KILN_POINTER_INVALID')) throw err;
      throw new KilnError('KILN_POINTER_INVALID', `${err.message}: prune cannot tell which release it names, and deletes nothing; ${fix}`, { cause: err });
    }
    if (pointer.app !== app || pointer.channel !== channel) throw new KilnError('KILN_POINTER_INVALID', `${what} names ${pointer.app}/${pointer.channel}: prune deletes nothing; ${fix}`);
    found.set(channel, pointer.version);
  });
  return found;
}
