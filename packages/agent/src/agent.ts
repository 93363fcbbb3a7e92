import path from 'node:path';
import {
  AGENT_VERSION,
  KilnError,
  appLayout,
  asKilnError,
  createProcessSupervisor,
  createSystemdService,
  createConfigStore,
  createReleaseStore,
  createS3Client,
  frame,
  logSource,
  proveIdentity,
  resolveSecrets,
  type AgentReport,
  type CommandResult,
  type ConfigStore,
  type Logger,
  type Message,
  type Outgoing,
  type PublicKey,
  type ReleaseStore,
  type ServiceManager,
} from '@kiln/shared';
import type { ClientOptions } from 'ws';
import { loadControllerCa, loadPinnedKeys, type AgentConfig } from './agent-config.js';
import { loadIdentity } from './agent-identity.js';
import { connectToController, type Connection } from './agent-connection.js';
import { createAgentJobs, type AgentJobs } from './agent-jobs.js';
import { configLoader } from './config-loader.js';
import { createAgentLogs } from './agent-logs.js';
import { collectReport, recentResults, stateReader, type LiveFacts } from './agent-report.js';
import { jittered } from './jittered.js';
import { sealImage } from './agent-seal.js';
import { readImageMarker, type ImageMarker } from './image-marker.js';
import { createJobQueue, type CommandMessage, type Job } from './job-queue.js';
import { UNCHECKED, type DigestCache } from './tree-check.js';
import { writeReportFile } from './report-file.js';

export interface AgentOptions {
  /** everything the agent reads and writes lives under this root ("/" on a real host) */
  root: string;
  config: AgentConfig;
  log: Logger;
  /** injected collaborators (tests, benchmarks with many agents in one process) */
  keys?: PublicKey[];
  store?: ReleaseStore;
  /** where fleet config versions come from (default: the agent's bucket) */
  configStore?: ConfigStore;
  service?: ServiceManager;
  /** how the process supervisor's daemon is started (its daemonCommand): kiln-agent starts it from its own file */
  supervisorCommand?: string[];
  wsOptions?: ClientOptions;
  now?: () => Date;
  random?: () => number;
  /** commands accepted while one runs; past this a command is refused with KILN_BUSY */
  maxQueued?: number;
  /** told of every frame sent and every job started (tests and benchmarks measure with it) */
  onEvent?: (event: AgentEvent) => void;
}

export type AgentEvent = { type: 'sent'; message: Outgoing } | { type: 'job'; job: Job['kind']; commandId?: string } | { type: 'connected'; connected: boolean };

export interface Agent {
  /** Boot path (recovery, marker, channel) then the live path; resolves once started, not once booted. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves once no job runs or waits. */
  idle(): Promise<void>;
  report(): Promise<AgentReport>;
  readonly connected: boolean;
}

/** One agent over one root. Many can run in one process (tests, benchmarks). */
export function createAgent(opts: AgentOptions): Agent {
  const { config, root } = opts;
  const log = opts.log.child({ module: 'agent', instance: config.instanceId });
  const now = opts.now ?? (() => new Date());
  const random = opts.random ?? Math.random;
  const layout = appLayout(root, config.app);
  const agentDir = path.join(layout.root, 'var/lib/kiln/agent');
  const service = opts.service ?? defaultService(opts, layout.appDir, log);
  // One S3 client for the releases and the fleet configs, made only when one of them is not injected.
  let client: ReturnType<typeof createS3Client> | undefined;
  const s3 = () => (client ??= createS3Client(config.s3));
  const store = opts.store ?? createReleaseStore(s3(), config.s3.bucket, config.s3.prefix);
  const configStore = opts.configStore ?? createConfigStore(s3(), config.s3.bucket, config.s3.prefix);
  const cache: DigestCache = new Map();
  const live: LiveFacts = { tree: UNCHECKED, operation: null, lastError: null, queued: 0 };
  const results = new Map<string, CommandResult>();
  const readState = stateReader(layout, config.app, log);
  let marker: ImageMarker | undefined;
  // Stays reported while the agent runs: the marker is read once, so a successful install does not fix it.
  let markerError: AgentReport['lastError'] = null;
  let conn: Connection | undefined;
  let stopped = false;
  const timers = new Set<NodeJS.Timeout>();
  let jobs: AgentJobs;

  // The hello waits for start-up recovery: it must carry a command an earlier run left interrupted.
  let recovered!: () => void;
  const recovery = new Promise<void>((resolve) => (recovered = resolve));
  async function loadResults(): Promise<void> {
    const state = await readState();
    for (const r of recentResults(state.commands, 100)) results.set(r.commandId, r);
  }

  const emit = (event: AgentEvent) => opts.onEvent?.(event);
  function send(message: Outgoing): void {
    if (conn?.send(frame(message))) emit({ type: 'sent', message });
  }

  const report = async () => collectReport({ root, instanceId: config.instanceId, imageId: config.imageId, app: config.app, channel: config.channel, agentVersion: AGENT_VERSION, marker, service, log, state: readState }, { ...live, lastError: live.lastError ?? markerError, queued: queue.waiting }, now());
  // Reports go out in order and never overlap; one asked for while another is built is merged into it.
  let reporting: Promise<void> | undefined;
  let again = false;
  function publish(): void {
    if (reporting) {
      again = true;
      return;
    }
    reporting = (async () => {
      do {
        again = false;
        const r = await report();
        await writeReportFile(agentDir, r).catch((err) => log.warn({ err }, 'cannot write the report file'));
        send({ type: 'report', report: r });
      } while (again && !stopped);
    })()
      .catch((err) => log.error({ err }, 'cannot build a report'))
      .finally(() => (reporting = undefined));
  }

  const queue = createJobQueue({
    inboxFile: path.join(agentDir, 'inbox.json'),
    maxQueued: opts.maxQueued ?? 8,
    log,
    run: (job) => {
      // A command restored from the inbox that start-up recovery found interrupted keeps its recorded outcome.
      if (job.kind === 'command' && results.has(job.command.id)) return Promise.resolve();
      emit({ type: 'job', job: job.kind, ...(job.kind === 'command' ? { commandId: job.command.id } : {}) });
      return jobs.run(job);
    },
  });

  jobs = createAgentJobs({
    root,
    config,
    log,
    store,
    service,
    // On the host, never by the controller: files under the root, the agent's own environment, AWS.
    resolveSecrets: (refs) => resolveSecrets(refs, { root, env: process.env, ...(config.s3.region ? { region: config.s3.region } : {}) }),
    loadConfig: configLoader(configStore, config.app, () => keys),
    keys: () => keys,
    now,
    random,
    cache,
    live,
    state: readState,
    isStopped: () => stopped,
    isConnected: () => conn?.connected ?? false,
    onResult(result) {
      results.set(result.commandId, result);
      if (results.size > 100) results.delete(results.keys().next().value!);
      send({ type: 'result', result });
    },
    onProgress: (commandId, stage, bytes, total) => send({ type: 'progress', commandId, stage, ...(bytes !== undefined ? { bytes, total } : {}) }),
    changed: publish,
    async seal() {
      marker = await sealImage(root, config.app, log, now());
      markerError = null;
      log.info({ release: marker.release }, 'sealed: this root is ready to become an image');
    },
    async recovered() {
      await loadResults().catch((err) => log.error({ err }, 'cannot read the command results'));
      recovered();
    },
  });

  let keys: PublicKey[] = opts.keys ?? [];
  // Log lines go straight to the socket: they are no event a test or benchmark counts.
  const logs = createAgentLogs({ source: logSource(config.serviceManager, root, config.app), log, send: (m) => conn?.send(frame(m)) ?? false });

  function onMessage(msg: Message): void {
    if (msg.type === 'error') {
      log.warn({ code: msg.error.code, message: msg.error.message, commandId: msg.commandId }, 'the controller refused a frame of ours');
      return;
    }
    if (msg.type === 'command') accept(msg);
    else if (msg.type === 'log-request') logs.request(msg);
    else if (msg.type === 'log-stop') logs.stop(msg.id);
  }

  function accept(cmd: CommandMessage): void {
    const refuse = (err: KilnError) => {
      log.warn({ commandId: cmd.id, code: err.code }, err.message);
      const version = cmd.action.kind === 'report' ? undefined : cmd.action.version;
      send({ type: 'result', result: { commandId: cmd.id, outcome: 'failed', ...(version ? { version } : {}), error: { code: err.code, message: err.message }, finishedAt: now().toISOString() } });
    };
    if (cmd.instanceId !== config.instanceId || cmd.app !== config.app) {
      return refuse(new KilnError('KILN_WRONG_TARGET', `command ${cmd.id} is for ${cmd.app} on ${cmd.instanceId}, but this agent serves ${config.app} on ${config.instanceId}`));
    }
    const inFlight = queue.has(cmd.id);
    if (inFlight) return send({ type: 'progress', commandId: cmd.id, stage: inFlight });
    const done = results.get(cmd.id);
    if (done) return send({ type: 'result', result: done });
    const refusal = jobs.precheck(cmd);
    if (refusal) return refuse(refusal);
    try {
      const how = queue.add({ kind: 'command', command: cmd });
      send({ type: 'progress', commandId: cmd.id, stage: how });
    } catch (err) {
      refuse(asKilnError(err));
    }
  }

  function every(periodMs: number, kind: 'poll' | 'tree', when: () => boolean): void {
    const tick = () => {
      timers.delete(t);
      if (stopped) return;
      if (when() && !queue.pending(kind)) queue.add({ kind });
      every(periodMs, kind, when);
    };
    const t = setTimeout(tick, jittered(periodMs, random));
    t.unref();
    timers.add(t);
  }

  return {
    async start() {
      if (!opts.keys) keys = await loadPinnedKeys(root, config.keys);
      const ca = config.controller?.ca ? await loadControllerCa(root, config.controller.ca) : undefined;
      try {
        marker = await readImageMarker(root, config.app);
      } catch (err) {
        const e = asKilnError(err);
        markerError = { code: e.code, message: e.message, at: now().toISOString() };
        log.error({ err: e }, 'the image marker does not parse: reporting no baked release');
      }
      await loadResults();
      // The key is made before the boot job can seal this root (a builder's): sealing removes it, so it
      // never reaches an image whichever runs first.
      const identity = config.controller ? await loadIdentity(agentDir, log) : undefined;
      queue.add({ kind: 'boot' });
      for (const cmd of await queue.restore()) {
        if (!results.has(cmd.id)) queue.add({ kind: 'command', command: cmd });
      }
      if (config.controller && identity) {
        const c = config.controller;
        conn = connectToController({
          url: c.url,
          credential: c.credential,
          instanceId: config.instanceId,
          log,
          heartbeatMs: config.heartbeatMs,
          backoffCapMs: config.backoffCapMs,
          random,
          ...(ca || opts.wsOptions ? { wsOptions: { ...(ca ? { ca } : {}), ...opts.wsOptions } } : {}),
          hello: async (nonce) => {
            await recovery;
            const r = await report();
            // Taken in the same turn the frame is sent: a result that finishes while the hello is built
            // is in it, and so is one that never reached state.json (refused before the install lock).
            const message: Outgoing = { type: 'hello', identity: proveIdentity(identity, nonce, config.instanceId), report: r, results: [...results.values()].slice(-50) };
            emit({ type: 'sent', message });
            return frame(message);
          },
          onMessage,
          onState: (connected) => {
            // Nobody reads a follow past its connection: the controller asks again on the next one.
            if (!connected) logs.closeAll();
            emit({ type: 'connected', connected });
          },
        });
      }
      // The channel pointer is polled only while the controller is away (or there is none).
      every(config.pollIntervalMs, 'poll', () => !conn?.connected);
      every(config.treeCheckIntervalMs, 'tree', () => true);
    },
    async stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      conn?.close();
      logs.closeAll();
      queue.close();
      jobs.abort();
      await queue.idle();
      // Nothing is written once stop() resolves (a root may be sealed or removed next).
      await reporting;
    },
    idle: () => queue.idle(),
    report,
    get connected() {
      return conn?.connected ?? false;
    },
  };
}

function defaultService(opts: AgentOptions, appDir: string, log: Logger): ServiceManager {
  const env = opts.config.port ? { PORT: String(opts.config.port) } : undefined;
  if (opts.config.serviceManager === 'systemd') return createSystemdService({ root: opts.root, app: opts.config.app, log, ...(env ? { env } : {}) });
  return createProcessSupervisor({ appDir, log, ...(env ? { env } : {}), daemonCommand: opts.supervisorCommand });
}
