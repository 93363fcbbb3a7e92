import { mkdir, mkdtemp, rename, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { fsyncDir, swapSymlink, writeFileAtomic } from '../system/fs-atomic.js';
import { phaseStopwatch } from '../system/phase-stopwatch.js';
import { appHealthGate } from './app-health.js';
import { appRun, hookError, keepConfig, linkPersistent, runHook, type HostConfig, type RunContext, type SecretResolver } from './app-run.js';
import { acquireLock } from './install-lock.js';
import { appLayout, type AppLayout } from '../release/install-layout.js';
import { currentVersion, installedRelease, isComplete, loadState, pruneReleases, readInstalledManifest, recoverApp, restoreService } from './install-recover.js';
import { peekState, writeJournal, writeState, type ConfigStamp, type InstallState, type Journal, type JournalStep, type Operation, type Via } from './install-state.js';
import { KilnError, asKilnError } from '../errors/kiln-error.js';
import { processStart } from '../system/process-alive.js';
import { hasErrno } from '../system/fs-errors.js';
import { checkName } from '../release/names.js';
import { fetchPointer, readLocalManifest, targetName, verifyManifest, type InstallTarget, type VerifiedManifest } from '../release/release-resolve.js';
import type { ReleaseStore, SignedObject } from '../release/release-store.js';
import { DEFAULT_LIMITS, type ExtractLimits, type ExtractedFile } from '../release/safe-extract.js';
import { fetchArtifact } from './fetch-artifact.js';
import { buildFromObjects } from './fetch-objects.js';
import type { HookOutcome, ServiceManager } from '../service/service-manager.js';
import { storedSize, type BoundConfig, type HookName, type Manifest } from '../release/release-schema.js';
import type { PublicKey } from '../release/signing.js';

export type InstallStep = 'resolve' | JournalStep;

export interface InstallOptions {
  root: string;
  app: string;
  target: InstallTarget;
  /** where releases come from; may be omitted when the release is already on disk */
  store?: ReleaseStore;
  /** the pinned release public keys */
  keys: PublicKey[];
  service: ServiceManager;
  log: Logger;
  /** how the release got here, reported as drift: baked | boot | hotfix | manual | rollback */
  via?: Via;
  /** the same command id twice is one install */
  commandId?: string;
  /** accept a release with a lower seq than the installed one (an operator's explicit choice) */
  allowDowngrade?: boolean;
  limits?: Partial<ExtractLimits>;
  /** releases kept beyond current and previous */
  keep?: number;
  /** as root: the service user that owns the release files */
  owner?: { uid: number; gid: number };
  /** the port the app gets when an instance overrides the manifest's */
  port?: number;
  /** the fleet config to run with (verified by the caller); absent: the one installed stays; null: none (back to before a config was deployed) */
  config?: HostConfig | null;
  /** resolves the config's secret references on this host */
  resolveSecrets?: SecretResolver;
  /**
   * With a channel target whose pointer names a fleet config, and no `config` given: reads and
   * verifies that version (the pointer binds it to the release, so it is the one to run with).
   */
  loadConfig?: (ref: BoundConfig) => Promise<HostConfig>;
  /** baking an image: only hooks marked `onBake` run */
  baking?: boolean;
  /** flush the release to disk before the swap (default true) */
  fsync?: boolean;
  /**
   * With a channel target: act only on a pointer newer than the one last accepted (the agent's boot
   * and polling), so a release installed by command since then is not undone by an older pointer.
   */
  newPointerOnly?: boolean;
  /** skip the health gate (baking an image, where nothing serves yet) */
  skipHealth?: boolean;
  downloadAttempts?: number;
  /** a download with no byte for this long is a stall */
  idleTimeoutMs?: number;
  /** reserved free space beyond the release's own size */
  reserveBytes?: number;
  now?: () => Date;
  /** told of every step once the journal records it, before the step's work; may be async (tests pause here) */
  onStep?: (step: InstallStep, version: string) => void | Promise<void>;
  onProgress?: (bytes: number, total: number) => void;
  /**
   * Told, once a download is verified, of the files written: each with its digest (checked against
   * the manifest) and its stamp (fileStamp), so a tree check need not read them again.
   */
  onExtracted?: (files: ExtractedFile[]) => void;
}

export interface InstallResult {
  outcome: 'installed' | 'unchanged' | 'rolled-back';
  app: string;
  version: string;
  previous: string | null;
  via: Via;
  downloaded: boolean;
  /** bytes read from the bucket, of the `releaseBytes` a download of the whole release reads (format 2 fetches only what the host lacks) */
  fetchedBytes?: number;
  releaseBytes?: number;
  /** the fleet config it runs with */
  config?: ConfigStamp;
  /** the hooks that ran: exit code, milliseconds, last lines */
  hooks?: Partial<Record<HookName, HookOutcome>>;
  /** what went wrong without failing the install (a failed beforeStop) */
  warnings?: string[];
  /** milliseconds per step */
  timings: Partial<Record<InstallStep, number>>;
}

/**
 * THE install routine: used by `kiln host install`, by the agent at boot and on command, by bakes.
 * resolve → download (stream) → verify → extract to staging → fsync → rename → mark complete →
 * journal → swap `current` → restart → health gate → commit, or swap back and restart the previous.
 */
export async function install(opts: InstallOptions): Promise<InstallResult> {
  return runOperation(opts, 'install');
}

/** Swaps back to the previous release (on disk, re-verified) through the same routine. */
export async function rollback(opts: Omit<InstallOptions, 'target' | 'allowDowngrade'>): Promise<InstallResult> {
  const layout = appLayout(opts.root, opts.app);
  // Read only: the routine re-reads (and, if need be, rebuilds) the state under the lock.
  const state = await peekState(layout.state);
  if (!state?.previous) throw new KilnError('KILN_NO_PREVIOUS', `${opts.app} has no previous release on ${layout.root} to roll back to`);
  if (!(await isComplete(layout, state.previous.version))) {
    throw new KilnError('KILN_NO_PREVIOUS', `the previous release ${state.previous.version} is no longer on disk; install a version instead`);
  }
  return runOperation({ ...opts, target: { version: state.previous.version }, allowDowngrade: true, via: 'rollback' }, 'rollback');
}

async function runOperation(opts: InstallOptions, op: 'install' | 'rollback'): Promise<InstallResult> {
  const app = checkName('app', opts.app);
  targetName(opts.target); // every name is checked before anything touches the disk
  const layout = appLayout(opts.root, app);
  const log = opts.log.child({ module: 'install', app, root: layout.root });
  const limits: ExtractLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const now = opts.now ?? (() => new Date());
  const via: Via = opts.via ?? 'manual';
  const timings: InstallResult['timings'] = {};
  const startedAt = now().toISOString();
  const watch = phaseStopwatch<InstallStep>('resolve');
  const timed = (next?: InstallStep) => {
    const ended = watch.next(next);
    timings[ended.name] = (timings[ended.name] ?? 0) + ended.ms;
  };
  const step = (name: InstallStep, version: string) => {
    timed(name);
    log.debug({ step: name, version }, 'install step');
  };

  // Before the lock only a read-only peek (a command already done, the accepted pointer seq); every
  // decision is made again under the lock on a fresh read, since another install may run meanwhile.
  const peek = await peekState(layout.state);
  const earlier = opts.commandId ? peek?.commands.find((c) => c.commandId === opts.commandId) : undefined;
  if (earlier) return replayed(earlier, app, via);

  let version: string;
  let pointerSeq: { channel: string; seq: number } | undefined;
  let expectSha: string | undefined;
  let given: SignedObject | undefined;
  let wanted = opts.config;
  /** the config came with a signed pointer, whose own seq guards against a replay: an older one is the operator's choice */
  let pointerConfig = false;
  if ('channel' in opts.target) {
    const channel = checkName('channel', opts.target.channel);
    if (!opts.store) throw new Error('installing from a channel needs a release store');
    const pointer = await fetchPointer(opts.store, app, channel, opts.keys, now());
    checkPointerSeq(app, channel, pointer.seq, peek?.channels[channel] ?? 0);
    if (opts.newPointerOnly && peek?.current && pointer.seq <= (peek.channels[channel] ?? 0)) return seenPointer(peek, app);
    version = pointer.version;
    expectSha = pointer.manifestSha256;
    pointerSeq = { channel, seq: pointer.seq };
    if (wanted === undefined && pointer.config && opts.loadConfig) {
      wanted = await opts.loadConfig(pointer.config);
      pointerConfig = true;
    }
  } else {
    version = checkName('version', opts.target.version);
    expectSha = opts.target.manifestSha256;
    // Only with a digest to hold it to: the signature alone would accept any signed release of this version.
    if (expectSha) given = opts.target.manifest;
  }
  const local = await readLocalManifest(layout.metaFile(version));
  const onDisk = local !== undefined && (await isComplete(layout, version));
  if (!onDisk && !opts.store) throw new KilnError('KILN_NOT_INSTALLED', `${app} ${version} is not on ${layout.root} and no bucket was given to fetch it from`);
  const verified = verifyManifest(onDisk ? local! : (given ?? (await opts.store!.getManifest(app, version))), { app, version, ...(expectSha ? { sha256: expectSha } : {}) }, opts.keys, limits);
  const { manifest } = verified;

  const lock = await acquireLock(layout.lock, `${op} ${app} ${version}`);
  const ctx: RunContext = { layout, service: opts.service, resolveSecrets: opts.resolveSecrets, owner: opts.owner };
  const hooks: NonNullable<InstallResult['hooks']> = {};
  const warnings: string[] = [];
  /** A hook a bake skipped, run at the release's first start here (no swap: a failure fails the start). */
  const firstStartHook = async (name: HookName, dir: string, config: ConfigStamp | undefined) => {
    const out = await runHook(ctx, { name, manifest, releaseDir: dir, config, port: opts.port });
    if (!out) return;
    hooks[name] = out;
    if (out.code !== 0) throw hookError(name, manifest.hooks![name]!, out);
  };
  let journal: Journal | undefined;
  let staging: string | undefined;
  try {
    await mkdir(layout.appDir, { recursive: true });
    await recoverApp(layout, app, log, opts.service, opts.resolveSecrets);
    const state = await loadState(layout, app, log);
    if (opts.commandId) {
      const done = state.commands.find((c) => c.commandId === opts.commandId);
      if (done) return replayed(done, app, via);
    }
    if (pointerSeq) {
      checkPointerSeq(app, pointerSeq.channel, pointerSeq.seq, state.channels[pointerSeq.channel] ?? 0);
      if (opts.newPointerOnly && state.current && pointerSeq.seq <= (state.channels[pointerSeq.channel] ?? 0)) return seenPointer(state, app);
    }
    if (op === 'rollback' && state.previous?.version !== version) {
      throw new KilnError('KILN_NO_PREVIOUS', `the previous release of ${app} changed while this rollback waited for the lock; run it again`);
    }
    // The config to run with: the one given, else (a rollback) the previous release's, else the one running.
    const fromConfig = state.current?.config;
    let config: ConfigStamp | undefined = op === 'rollback' ? state.previous?.config : fromConfig;
    if (wanted) {
      const c = wanted;
      if (c.seq < (fromConfig?.seq ?? 0) && !opts.allowDowngrade && !pointerConfig) {
        throw new KilnError('KILN_CONFIG_STALE', `config version ${c.seq} of ${app} is older than version ${fromConfig!.seq} running here: refusing a replayed config`);
      }
      if (fromConfig?.seq !== c.seq || fromConfig.sha256 !== c.sha256) await keepConfig(layout, c);
      config = { seq: c.seq, sha256: c.sha256 };
    } else if (wanted === null) config = undefined;
    const sameConfig = config?.seq === fromConfig?.seq && config?.sha256 === fromConfig?.sha256;
    const from = await currentVersion(layout);
    if (from === version && state.current?.manifestSha256 === verified.sha256 && sameConfig) {
      if (pointerSeq && (state.channels[pointerSeq.channel] ?? 0) < pointerSeq.seq) state.channels[pointerSeq.channel] = pointerSeq.seq;
      // Installed means installed, running and healthy: a stopped app is started (no swap, so nothing
      // to undo), and one that runs still passes its health check (it may be starting after a swap-back).
      let started = Date.now();
      // Hooks a bake left for the first start of the release on an instance of its image.
      const pending = opts.baking ? [] : (state.current.pendingHooks ?? []);
      const release = layout.release(version);
      if (pending.includes('beforeStart')) await firstStartHook('beforeStart', release, config);
      if (pending.length || !(await opts.service.status()).active) {
        log.info({ version }, 'already installed but not running: starting it');
        await opts.service.restart(await appRun(ctx, manifest, config));
        started = Date.now();
      }
      if (!opts.skipHealth) await healthGate(opts, manifest, release, started);
      if (pending.includes('validate')) await firstStartHook('validate', release, config);
      if (pending.length) delete state.current.pendingHooks;
      await commitState(layout, state, { op, version, commandId: opts.commandId, startedAt, finishedAt: now().toISOString(), outcome: 'unchanged' });
      log.info({ version }, 'already installed: nothing to do');
      return { outcome: 'unchanged', app, version, previous: state.previous?.version ?? null, via: state.current.via, downloaded: false, ...(config ? { config } : {}), ...(Object.keys(hooks).length ? { hooks } : {}), timings };
    }
    const installedSeq = state.current?.seq ?? 0;
    if (manifest.seq < installedSeq && !opts.allowDowngrade && !pointerSeq) {
      throw new KilnError('KILN_SEQ_DOWNGRADE', `${app} ${version} has seq ${manifest.seq}, lower than the installed ${state.current!.version} (seq ${installedSeq}); use \`kiln host rollback\` or --allow-downgrade`);
    }

    journal = { schema: 1, op, app, version, from, via, ...(pointerSeq ? { pointer: pointerSeq } : {}), ...(config ? { config } : {}), step: 'fetch', ...(opts.commandId ? { commandId: opts.commandId } : {}), startedAt, pid: process.pid };
    // The journal names the step before it starts; the hook runs after, so a crash there is recoverable.
    const advance = async (s: JournalStep) => {
      step(s, version);
      journal!.step = s;
      await writeJournal(layout.journal, journal!);
      await opts.onStep?.(s, version);
    };
    /** hooks a bake did not run (not `onBake`): the release's first start on an instance of the image runs them */
    const skipped: HookName[] = [];
    /** Runs a hook of `m` as a journaled step (baking: only one marked onBake); a failure throws unless `warnOnly`. */
    const hook = async (name: HookName, m: Manifest, dir: string, withConfig: ConfigStamp | undefined, warnOnly = false) => {
      const spec = m.hooks?.[name];
      if (!spec) return;
      if (opts.baking && !spec.onBake) {
        if (m === manifest) skipped.push(name);
        return;
      }
      await advance(name === 'beforeStart' ? 'before-start' : name === 'beforeStop' ? 'before-stop' : 'validate');
      const onSpawn = async (pid: number) => {
        journal!.hook = { pid, start: processStart(pid) };
        await writeJournal(layout.journal, journal!);
      };
      const out = (await runHook(ctx, { name, manifest: m, releaseDir: dir, config: withConfig, port: opts.port, onSpawn }))!;
      delete journal!.hook;
      hooks[name] = out;
      log.info({ hook: name, code: out.code, ms: out.ms, timedOut: out.timedOut }, 'hook ran');
      if (out.code === 0) return;
      const err = hookError(name, spec, out);
      if (!warnOnly) throw err;
      warnings.push(err.message);
      log.warn({ hook: name, code: out.code }, 'hook failed: going on');
    };

    let downloaded = false;
    // A release already on disk (a rollback, a re-install after a failed start) costs no download.
    let fetched = { fetchedBytes: 0, releaseBytes: storedSize(manifest) };
    let built: FetchResult | undefined;
    if (!onDisk) {
      await mkdir(layout.staging, { recursive: true });
      staging = await mkdtemp(path.join(layout.staging, `${version}-`));
      await advance('fetch');
      await checkFreeSpace(layout, verified, opts.reserveBytes ?? 64 * 1024 * 1024);
      built = await fetchRelease({ opts, verified, layout, staging, limits, log });
      opts.onExtracted?.(built.files);
      fetched = { fetchedBytes: built.fetchedBytes, releaseBytes: storedSize(manifest) };
      downloaded = true;
      await advance('rename');
      await rm(layout.release(version), { recursive: true, force: true });
      await mkdir(layout.releases, { recursive: true });
      await rename(path.join(staging, 'tree'), layout.release(version));
      await fsyncDir(layout.releases);
      await rm(staging, { recursive: true, force: true });
      staging = undefined;
      await advance('mark');
      await mkdir(layout.meta, { recursive: true });
      // The stamps the files got as written: a later install trusts a file that keeps its stamp without
      // reading it. Beside the marker, not in it: a no-op install reads the marker and never needs them.
      await writeFileAtomic(layout.stampsFile(version), JSON.stringify(Object.fromEntries(built!.files.map((f) => [f.path, f.stamp]))) + '\n');
      await writeFileAtomic(layout.metaFile(version), JSON.stringify({ manifest: verified.bytes.toString('utf8'), sig: verified.sig.toString('utf8'), sha256: verified.sha256 }) + '\n');
    }
    await linkPersistent(ctx, manifest, layout.release(version));
    // Before anything is swapped: a secret that cannot be resolved, or a failing migration, leaves the
    // old release serving, untouched.
    const run = await appRun(ctx, manifest, config);
    await hook('beforeStart', manifest, layout.release(version), config);
    if (from && (await opts.service.status()).active) {
      const old = await readInstalledManifest(layout, from);
      if (old) await hook('beforeStop', old.manifest, layout.release(from), fromConfig, true);
    }

    await advance('swap');
    await swapSymlink(layout.current, `releases/${version}`);
    try {
      await advance('restart');
      await opts.service.restart(run);
      // Processes without a check of their own must stay up from here, once all of them were started.
      const restarted = Date.now();
      if (!opts.skipHealth) {
        await advance('health');
        await healthGate(opts, manifest, layout.release(version), restarted);
      }
      await hook('validate', manifest, layout.release(version), config);
    } catch (err) {
      await swapBack({ layout, from, fromConfig, version, opts, log });
      throw err;
    }

    await advance('commit');
    const installedAt = now().toISOString();
    if (state.current && (state.current.version !== version || !sameConfig)) state.previous = state.current;
    state.current = { ...installedRelease(version, verified, via, installedAt), ...fetched, ...(config ? { config } : {}), ...(skipped.length ? { pendingHooks: skipped } : {}) };
    if (pointerSeq) state.channels[pointerSeq.channel] = Math.max(state.channels[pointerSeq.channel] ?? 0, pointerSeq.seq);
    const outcome = op === 'rollback' ? 'rolled-back' : 'installed';
    await commitState(layout, state, { op, version, commandId: opts.commandId, startedAt, finishedAt: installedAt, outcome, ...fetched });
    await rm(layout.journal, { force: true });
    await pruneReleases(layout, state, opts.keep ?? 2, log);
    timed();
    log.info({ version, previous: from, timings }, op === 'rollback' ? 'rolled back' : 'installed');
    return { outcome, app, version, previous: from, via, downloaded, ...fetched, ...(config ? { config } : {}), ...(Object.keys(hooks).length ? { hooks } : {}), ...(warnings.length ? { warnings } : {}), timings };
  } catch (err) {
    const error = asKilnError(err, 'KILN_INSTALL_FAILED');
    log.error({ err: error, version }, `${op} failed`);
    if (staging) await rm(staging, { recursive: true, force: true });
    if (journal?.step === 'rename' || journal?.step === 'mark') {
      await rm(layout.metaFile(version), { force: true });
      await rm(layout.stampsFile(version), { force: true });
      await rm(layout.release(version), { recursive: true, force: true });
    }
    if (journal) await rm(layout.journal, { force: true });
    const fresh = await loadState(layout, app, log);
    await commitState(layout, fresh, { op, version, commandId: opts.commandId, startedAt, finishedAt: now().toISOString(), outcome: 'failed', error: { code: error.code, message: error.message } });
    throw error;
  } finally {
    await lock.release();
  }
}

/** The release's health gate (every process), on the port the instance gave the app. */
async function healthGate(opts: InstallOptions, manifest: Manifest, releaseDir: string, startedAt: number): Promise<void> {
  const port = opts.port ?? (await opts.service.status()).port ?? undefined;
  await appHealthGate({ service: opts.service, manifest, releaseDir, port, startedAt });
}

function checkPointerSeq(app: string, channel: string, seq: number, accepted: number): void {
  if (seq < accepted) throw new KilnError('KILN_POINTER_STALE', `channel pointer ${app}/${channel} has seq ${seq}, older than seq ${accepted} already accepted: refusing a replayed pointer`);
}

/** A pointer already acted on: whatever is installed since stays. */
function seenPointer(state: InstallState, app: string): InstallResult {
  const cur = state.current!;
  return { outcome: 'unchanged', app, version: cur.version, previous: state.previous?.version ?? null, via: cur.via, downloaded: false, timings: {} };
}

function replayed(done: Operation, app: string, via: Via): InstallResult {
  if (done.error) throw new KilnError(done.error.code as KilnError['code'], `command ${done.commandId} already ran: ${done.error.message}`);
  return { outcome: 'unchanged', app, version: done.version, previous: null, via, downloaded: false, timings: {} };
}

async function commitState(layout: AppLayout, state: InstallState, last: Operation & { commandId?: string | undefined }): Promise<void> {
  const op: Operation = { ...last };
  if (op.commandId === undefined) delete op.commandId;
  state.last = op;
  if (op.commandId) state.commands = [...state.commands.filter((c) => c.commandId !== op.commandId), op].slice(-100);
  await writeState(layout.state, state);
}

async function checkFreeSpace(layout: AppLayout, verified: VerifiedManifest, reserve: number): Promise<void> {
  const fs = await statfs(layout.appDir);
  const free = fs.bavail * fs.bsize;
  // Files round up to blocks: count a block per entry on top of the bytes.
  const need = verified.manifest.unpackedSize + verified.manifest.files.length * fs.bsize + reserve;
  if (free < need) {
    throw new KilnError('KILN_NO_SPACE', `${verified.manifest.app} ${verified.manifest.version} needs ${mib(need)} MiB free on ${layout.appDir} (release plus reserve) but only ${mib(free)} MiB are free`);
  }
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);

interface FetchResult {
  files: ExtractedFile[];
  fetchedBytes: number;
}

/** Puts the release's tree in `staging/tree`: format 1 from its artifact, format 2 from this host's files and the contents it lacks. */
async function fetchRelease(args: { opts: InstallOptions; verified: VerifiedManifest; layout: AppLayout; staging: string; limits: ExtractLimits; log: Logger }): Promise<FetchResult> {
  const { opts, verified, staging, limits, log } = args;
  const common = { owner: opts.owner, fsync: opts.fsync ?? true, attempts: opts.downloadAttempts ?? 3, idleTimeoutMs: opts.idleTimeoutMs ?? 10_000, log, limits, onProgress: opts.onProgress };
  const { manifest } = verified;
  if (manifest.schema === 1) return { files: await fetchArtifact({ ...common, store: opts.store!, verified: { ...verified, manifest }, staging }), fetchedBytes: manifest.artifact.size };
  const tree = path.join(staging, 'tree');
  await mkdir(tree, { mode: 0o755 });
  try {
    return await buildFromObjects({ ...common, store: opts.store, verified: { ...verified, manifest }, tree, layout: args.layout, share: opts.service.appReadOnly === true });
  } catch (err) {
    if (hasErrno(err, 'ENOSPC', 'EDQUOT')) throw new KilnError('KILN_NO_SPACE', `the disk filled up while building ${manifest.app} ${manifest.version}`, { cause: err });
    throw err;
  }
}

async function swapBack(args: { layout: AppLayout; from: string | null; fromConfig: ConfigStamp | undefined; version: string; opts: InstallOptions; log: Logger }): Promise<void> {
  const { layout, from, version, opts, log } = args;
  log.warn({ version, back: from }, 'new release failed: swapping back');
  if (from) await swapSymlink(layout.current, `releases/${from}`);
  else await rm(layout.current, { force: true });
  await restoreService(layout, from ? { version: from, config: args.fromConfig } : null, { service: opts.service, resolveSecrets: opts.resolveSecrets, owner: opts.owner }, log);
}
