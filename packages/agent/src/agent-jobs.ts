import { setTimeout as sleep } from 'node:timers/promises';
import {
  KilnError,
  appLayout,
  asKilnError,
  backoffDelay,
  fetchedOf,
  install,
  loadState,
  readInstalledManifest,
  recoverUnderLock,
  restoreService,
  rollback,
  appHealthGate,
  type CommandResult,
  type InstallOptions,
  type InstallResult,
  type InstallState,
  type Logger,
  type PublicKey,
  type ReleaseStore,
  type SecretResolver,
  type ServiceManager,
  TRANSIENT_S3_CODES,
} from '@kiln/shared';
import type { AgentConfig } from './agent-config.js';
import type { ConfigLoader } from './config-loader.js';
import { treeCheckOf, type LiveFacts } from './agent-report.js';
import type { CommandMessage, Job } from './job-queue.js';
import { UNCHECKED, rememberDigests, type DigestCache } from './tree-check.js';

export interface AgentJobsOptions {
  root: string;
  config: AgentConfig;
  log: Logger;
  store: ReleaseStore;
  service: ServiceManager;
  /** resolves a fleet config's secret references on this host */
  resolveSecrets: SecretResolver;
  /** reads and verifies the fleet config version a channel pointer or a command binds to its release */
  loadConfig: ConfigLoader;
  keys: () => PublicKey[];
  now: () => Date;
  random: () => number;
  cache: DigestCache;
  /** updated in place: the running operation, the last error, the tree check */
  live: LiveFacts;
  /** state.json, read again only when it changed (stateReader) */
  state: () => Promise<InstallState>;
  isStopped: () => boolean;
  isConnected: () => boolean;
  onResult: (result: CommandResult) => void;
  onProgress: (commandId: string, stage: string, bytes?: number, total?: number) => void;
  /** start-up recovery is over (done or failed): state.json now records what an earlier run left interrupted */
  recovered: () => Promise<void>;
  /** something a report shows changed */
  changed: () => void;
  /** a builder (`seal` in the config) seals its root after the boot install */
  seal: () => Promise<void>;
}

export interface AgentJobs {
  run(job: Job): Promise<void>;
  /** A refusal known before queueing (a lower seq than installed), or undefined. */
  precheck(cmd: CommandMessage): KilnError | undefined;
  /** Ends boot retries; a running install finishes on its own. */
  abort(): void;
}

const PROGRESS_EVERY_MS = 500;

/** What the agent does: boot, poll the channel, run a command, check the tree. All through the one install routine. */
export function createAgentJobs(o: AgentJobsOptions): AgentJobs {
  const { config, live, log } = o;
  const layout = appLayout(o.root, config.app);
  const aborter = new AbortController();
  let installedSeq = 0;

  function routine(extra: Partial<Omit<InstallOptions, 'target'>>, commandId?: string): Omit<InstallOptions, 'target'> {
    let lastProgress = 0;
    return {
      root: o.root,
      app: config.app,
      store: o.store,
      keys: o.keys(),
      service: o.service,
      resolveSecrets: o.resolveSecrets,
      loadConfig: o.loadConfig,
      log,
      keep: config.keep,
      now: o.now,
      ...(config.port ? { port: config.port } : {}),
      onStep: (step, version) => {
        live.operation = { ...(commandId ? { commandId } : {}), op: extra.via === 'rollback' ? 'rollback' : 'install', version, step, startedAt: live.operation?.startedAt ?? o.now().toISOString() };
        if (commandId) {
          o.onProgress(commandId, step);
          lastProgress = Date.now();
        }
        o.changed();
      },
      // Byte counts at most every PROGRESS_EVERY_MS, counted from the command's last progress frame:
      // a download that ends within that time after its `fetch` frame sends none.
      onProgress: (bytes, total) => {
        if (!commandId || Date.now() - lastProgress < PROGRESS_EVERY_MS) return;
        lastProgress = Date.now();
        o.onProgress(commandId, 'fetch', bytes, total);
      },
      // The tree check after the install then reads none of the files it just wrote and checked.
      onExtracted: (files) => rememberDigests(o.cache, files),
      ...extra,
    };
  }

  /** Runs one routine call, keeping the live facts true whatever happens. */
  async function attempt(what: string, run: () => Promise<InstallResult>, version?: string, commandId?: string): Promise<InstallResult> {
    // A channel's version is known only once its pointer is read: the routine's first step reports it.
    if (version) {
      live.operation = { ...(commandId ? { commandId } : {}), op: what === 'rollback' ? 'rollback' : 'install', version, step: 'resolve', startedAt: o.now().toISOString() };
      o.changed();
    }
    try {
      const result = await run();
      // What failed stays shown until something changes: a no-op (the release it swapped back to, asked again) does not clear it.
      if (result.outcome !== 'unchanged') live.lastError = null;
      if (result.outcome !== 'unchanged' || result.downloaded) await checkTree();
      return result;
    } catch (err) {
      const e = asKilnError(err, 'KILN_INSTALL_FAILED');
      live.lastError = { code: e.code, message: e.message, at: o.now().toISOString() };
      throw e;
    } finally {
      live.operation = null;
      await refreshSeq();
      o.changed();
    }
  }

  /** Never throws: it runs after every job, whose own outcome must not be replaced by this read's. */
  async function refreshSeq(): Promise<void> {
    const state = await o.state().catch((err: unknown) => void log.warn({ err }, 'cannot read the install state: keeping the last known seq'));
    installedSeq = state?.current?.seq ?? installedSeq;
  }

  /** Never throws: a file vanishing mid-check must not fail the install or the command that ran it. */
  async function checkTree(): Promise<void> {
    const before = JSON.stringify({ ...live.tree, checkedAt: null });
    try {
      live.tree = await treeCheckOf(o.root, config.app, o.cache, o.now());
    } catch (err) {
      log.warn({ err }, 'tree check failed: reporting the tree unchecked');
      live.tree = UNCHECKED;
    }
    if (JSON.stringify({ ...live.tree, checkedAt: null }) !== before) {
      if (live.tree.status === 'modified') log.warn({ tree: live.tree }, 'the installed tree differs from its manifest');
      o.changed();
    }
  }

  /**
   * The installed release runs even before the channel is known (a reboot, S3 away), with its config
   * (secrets resolved again). Hooks a bake left for the release's first start run through the
   * routine, on the release on disk.
   */
  async function ensureServing(): Promise<void> {
    const state = await loadState(layout, config.app, log);
    const cur = state.current;
    if (!cur) return;
    if (cur.pendingHooks?.length) {
      log.info({ version: cur.version, hooks: cur.pendingHooks }, 'first start of the baked release: running its pending hooks');
      await install({ ...routine({ via: cur.via }), target: { version: cur.version, manifestSha256: cur.manifestSha256 } });
      return;
    }
    if ((await o.service.status()).active) return;
    const installed = await readInstalledManifest(layout, cur.version);
    if (!installed) return;
    log.info({ version: cur.version }, 'starting the installed release');
    const failed = await restoreService(layout, cur, { service: o.service, resolveSecrets: o.resolveSecrets }, log);
    if (failed) throw failed;
    const startedAt = Date.now();
    const port = config.port ?? (await o.service.status()).port ?? undefined;
    await appHealthGate({ service: o.service, manifest: installed.manifest, releaseDir: layout.release(cur.version), port, startedAt });
  }

  async function boot(): Promise<void> {
    try {
      const { interrupted } = await recoverUnderLock(layout, config.app, log, o.service, o.resolveSecrets).finally(o.recovered);
      if (interrupted) log.warn({ interrupted }, 'recovered an interrupted install');
      await ensureServing();
    } catch (err) {
      const e = asKilnError(err, 'KILN_INSTALL_FAILED');
      live.lastError = { code: e.code, message: e.message, at: o.now().toISOString() };
      log.error({ err: e }, 'start-up recovery failed');
    }
    await refreshSeq();
    for (let n = 0; !o.isStopped(); n++) {
      try {
        const r = await attempt('boot', () => install({ ...routine({ via: 'boot', newPointerOnly: true, baking: config.seal }), target: { channel: config.channel } }));
        log.info({ version: r.version, outcome: r.outcome, downloaded: r.downloaded }, 'boot: the channel is installed');
        break;
      } catch (err) {
        const e = asKilnError(err);
        if (!TRANSIENT_S3_CODES.has(e.code)) {
          log.error({ err: e }, 'boot: the channel cannot be installed; the installed release keeps serving');
          break;
        }
        const delay = backoffDelay(n, { baseMs: 1_000, capMs: config.backoffCapMs, random: o.random });
        log.warn({ code: e.code, retryInMs: delay }, 'boot: the bucket is unreachable; the installed release keeps serving, retrying');
        await sleep(delay, undefined, { signal: aborter.signal }).catch((err: unknown) => {
          if ((err as Error).name !== 'AbortError') throw err; // the agent stops: the loop ends
        });
      }
    }
    // A boot that installed nothing (an image booted with its baked release) checks the tree now, not a period later.
    if (live.tree.status === 'unchecked' && !o.isStopped()) await checkTree();
    if (config.seal && !o.isStopped()) {
      await o.seal().catch((err) => {
        const e = asKilnError(err);
        live.lastError = { code: e.code, message: `sealing the image failed: ${e.message}`, at: o.now().toISOString() };
        log.error({ err: e }, 'cannot seal this root for its image');
      });
      o.changed();
    }
  }

  async function poll(): Promise<void> {
    if (o.isConnected()) return;
    try {
      const r = await attempt('poll', () => install({ ...routine({ via: 'hotfix', newPointerOnly: true }), target: { channel: config.channel } }));
      if (r.outcome !== 'unchanged') log.info({ version: r.version }, 'poll: installed the release the channel points to');
    } catch (err) {
      log.warn({ code: asKilnError(err).code }, 'poll: the channel could not be installed');
    }
  }

  async function command(cmd: CommandMessage): Promise<void> {
    const a = cmd.action;
    const finish = (r: Omit<CommandResult, 'commandId' | 'finishedAt'>) => o.onResult({ commandId: cmd.id, ...r, finishedAt: o.now().toISOString() });
    if (a.kind === 'report') {
      await checkTree();
      o.changed();
      return finish({ outcome: 'reported' });
    }
    try {
      // The config the command binds to its release, read and verified inside the attempt: a failure is the command's.
      const withConfig = async () => ({ commandId: cmd.id, ...(a.config !== undefined ? { config: a.config && (await o.loadConfig(a.config)) } : {}) });
      let r: InstallResult;
      if (a.kind === 'install') {
        r = await attempt('install', async () => install({ ...routine({ ...(await withConfig()), via: 'hotfix' }, cmd.id), target: { version: a.version, manifestSha256: a.manifestSha256, ...(a.manifest ? { manifest: { bytes: Buffer.from(a.manifest.bytes, 'base64'), sig: Buffer.from(a.manifest.sig, 'base64') } } : {}) } }), a.version, cmd.id);
      } else if (a.version) {
        const target = { version: a.version, ...(a.manifestSha256 ? { manifestSha256: a.manifestSha256 } : {}) };
        r = await attempt('rollback', async () => install({ ...routine({ ...(await withConfig()), via: 'rollback', allowDowngrade: true }, cmd.id), target }), a.version, cmd.id);
      } else {
        const previous = (await loadState(layout, config.app, log)).previous?.version;
        r = await attempt('rollback', async () => rollback(routine({ ...(await withConfig()), via: 'rollback' }, cmd.id)), previous, cmd.id);
      }
      finish({ outcome: r.outcome, version: r.version, ...fetchedOf(r) });
    } catch (err) {
      const e = asKilnError(err, 'KILN_INSTALL_FAILED');
      finish({ outcome: 'failed', ...(a.version ? { version: a.version } : {}), error: { code: e.code, message: e.message } });
    }
  }

  return {
    async run(job) {
      if (job.kind === 'boot') return boot();
      if (job.kind === 'poll') return poll();
      if (job.kind === 'tree') return checkTree();
      return command(job.command);
    },
    precheck(cmd) {
      const a = cmd.action;
      if (a.kind === 'install' && a.seq < installedSeq) {
        return new KilnError('KILN_SEQ_DOWNGRADE', `command ${cmd.id} asks for ${a.version} (seq ${a.seq}), lower than the installed seq ${installedSeq}; send a rollback instead`);
      }
      return undefined;
    },
    abort: () => aborter.abort(),
  };
}
