#!/usr/bin/env node
// bench:fanout — measures the controller goals of the controller issue, each process on its own:
//   1. hotfix fan-out: 1,000 real agents (createAgent, many per child process, each on its own root) on
//      v(k-1), `--batch 100%` to a ~1 MiB release on the loopback S3: deployment posted → the record's
//      verdict `succeeded` (goal <= 10 s), and command delivery p50/p99 (goal p99 <= 100 ms);
//   2. 10,000 idle connected clients speaking the agent protocol (hello, heartbeats): the controller
//      process's RSS and CPU over a window (goals <= 400 MB, <= 10% of a core), next to the same
//      controller with no agent connected;
//   3. `kiln status` for those 10,000 instances: GET /v1/fleets/NAME/instances plus rendering the
//      table (and the CLI end to end, when it has a `status` command) (goal <= 1 s).
// Usage: node --openssl-legacy-provider scripts/bench-fanout.mjs [--agents N (1000)] [--agent-procs N (4)]
//        [--runs N (3)] [--warmup N (1)] [--release-kib N (1024)] [--idle N (10000)] [--client-procs N (4)]
//        [--idle-runs N (3)] [--window S (60)] [--settle S (10)] [--status-runs N (5)] [--skip fanout,idle]
//        [--json-out FILE (default bench-results/fanout.json)] [--keep-temp] [--agent-node-arg ARG ...]
//        [--controller-node-arg ARG ...] [--profile-dir DIR (CPU profiles of the last deployment and idle window)]
//        [--shared-store (one S3 client per agent process)] [--poll-ms N (250, as kiln deploy polls)]
//        [--quiet-wait S (60: the longest wait, before each measurement, for other processes to use < 0.5 core)]
// Writes a markdown report to stdout and the figures as JSON. Everything lives in one temp dir, removed at
// the end (also on failure or Ctrl-C); every process it starts is stopped by its pid.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { copyRoots, installTemplateRoot } from './bench-roots.mjs';
import { CLK_TCK, benchService, cleanupOnce, intOption, machineTicks, median, nextMessage, openFilesLimit, pct, printUsage, procMem, procTicks, r1, r2, say } from './bench-measure.mjs';

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const CLI = path.join(TOP, 'packages/controller/dist/main.js');
// ws is a dependency of the agent and controller packages, not of the workspace root
const { WebSocket } = createRequire(path.join(TOP, 'packages/agent/package.json'))('ws');

const APP = 'benchapp';
const CHANNEL = 'stable';
const OPERATOR = 'operator-token-for-the-benchmark-0123456789';
const NODE_ARGS = ['--openssl-legacy-provider'];
const CHILD_ENV = { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const MiB = 1024 * 1024;
const MB_IN_MiB = 1e6 / MiB;

const dist = (xs) => (xs.length ? { p50: r1(pct(xs, 50)), p90: r1(pct(xs, 90)), p99: r1(pct(xs, 99)), min: r1(Math.min(...xs)), max: r1(Math.max(...xs)), n: xs.length } : null);
/** CLOCK_MONOTONIC in ms: one clock for every process on the host, so stamps taken in different processes compare. */
const mono = () => Number(process.hrtime.bigint()) / 1e6;

/** The kernel's count of connections dropped because a listening socket's accept queue was full. */
function listenOverflows() {
  const [head, values] = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'));
  const i = head.split(' ').indexOf('ListenOverflows');
  return i > 0 ? Number(values.split(' ')[i]) : NaN;
}

/** The first IPC message of `type` from the parent. */
function fromParent(type) {
  return new Promise((resolve) => {
    const on = (m) => {
      if (m?.type !== type) return;
      process.off('message', on);
      resolve(m);
    };
    process.on('message', on);
  });
}

/** CPU profiling of a child on request (--profile-dir): started before a deployment, written after it. */
function profileOnRequest() {
  let session;
  process.on('message', async (m) => {
    if (m?.type === 'profile-start') {
      const { Session } = await import('node:inspector/promises');
      session = new Session();
      session.connect();
      await session.post('Profiler.enable');
      await session.post('Profiler.setSamplingInterval', { interval: 500 });
      await session.post('Profiler.start');
      process.send({ type: 'profile-start' });
    } else if (m?.type === 'profile-stop') {
      const { profile } = await session.post('Profiler.stop');
      await writeFile(m.file, JSON.stringify(profile));
      session.disconnect();
      process.send({ type: 'profile-stop' });
    }
  });
}

/** Child processes exit with their parent (a bench killed by SIGKILL leaves nothing running). */
function exitWithParent() {
  process.on('disconnect', () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// Child mode: the embedded S3 (s3rver), so its work does not share an event loop with anything measured.
// ---------------------------------------------------------------------------------------------
async function s3Child() {
  exitWithParent();
  const { dir } = await fromParent('init');
  const { startEmbeddedS3 } = await import('@kiln/controller');
  // It stands in for S3, which is not on this machine: a deep accept queue (with s3rver's 511, the
  // SYNs of 1,000 agents connecting at once overflow it and their connects time out) and a higher
  // priority than the processes measured, so that it answers as promptly as it can.
  const http = await import('node:http');
  const listen = http.Server.prototype.listen;
  http.Server.prototype.listen = function (port, host, _backlog, callback) {
    return listen.call(this, port, host, 4096, callback);
  };
  try {
    os.setPriority(process.pid, -5);
  } catch {}
  const s3 = await startEmbeddedS3({ directory: dir, bucket: 'kiln' });
  http.Server.prototype.listen = listen;
  process.send({ type: 'ready', pid: process.pid, location: s3.location });
  await fromParent('stop');
  await s3.close();
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Child mode: the controller (buildServer + listen), as `kiln` would run it. The one harness hook:
// hub.command is wrapped to stamp when the controller sends each command (it does not change
// what is sent or when).
// ---------------------------------------------------------------------------------------------
async function controllerChild() {
  exitWithParent();
  const a = await fromParent('init');
  const { createLogger, createS3Client, parsePrivateKey, parsePublicKey } = await import('@kiln/shared');
  const { buildServer } = await import('@kiln/controller');
  // Counts the controller's own S3 requests (deployment records, pointers): harness bookkeeping only.
  const s3 = createS3Client(a.location);
  const s3Ops = {};
  s3.middlewareStack.add(
    (next, context) => async (args) => {
      const k = context.commandName;
      const o = (s3Ops[k] ??= { n: 0, bytes: 0 });
      o.n++;
      o.bytes += args.input?.Body?.length ?? 0;
      return next(args);
    },
    { step: 'initialize', name: 'benchCount' },
  );
  const server = await buildServer({
    log: createLogger({ level: 'warn', name: 'controller' }),
    s3,
    bucket: a.location.bucket,
    prefix: a.prefix,
    operatorTokens: [OPERATOR],
    signingKey: parsePrivateKey(a.privatePem, 'bench key'),
    trustedKeys: [parsePublicKey(a.publicPem, 'bench key')],
  });
  const hub = server.kiln.hub;
  const sends = new Map();
  const frames = { report: 0, progress: 0, result: 0 };
  for (const k of Object.keys(frames)) hub.on(k, () => frames[k]++);
  const command = hub.command;
  hub.command = (instanceId, id, app, action) => {
    const t = mono();
    const ok = command(instanceId, id, app, action);
    if (ok && !sends.has(id)) sends.set(id, t);
    return ok;
  };
  await server.listen({ host: '127.0.0.1', port: 0 });
  profileOnRequest();
  process.send({ type: 'ready', pid: process.pid, port: server.server.address().port, nofile: openFilesLimit() });
  process.on('message', async (m) => {
    if (m?.type === 'sends') {
      const out = [...sends].filter(([id]) => id.startsWith(m.prefix));
      for (const [id] of out) sends.delete(id);
      process.send({ type: 'sends', sends: out, frames: { ...frames }, s3Ops: structuredClone(s3Ops) });
    } else if (m?.type === 'stop') {
      await server.close();
      process.exit(0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Child mode: many real agents in one process, each on its own root (and S3 client, unless --shared-store).
// ---------------------------------------------------------------------------------------------
async function agentsChild() {
  exitWithParent();
  const a = await fromParent('init');
  const { createLogger, createReleaseStore, createS3Client, parsePublicKey } = await import('@kiln/shared');
  const { createAgent, parseAgentConfig } = await import('@kiln/agent');
  const log = createLogger({ level: 'warn', name: 'bench-agents' });
  // --shared-store: one S3 client for the process. By default each agent makes its own from its
  // config, as on a host: a shared client's 50 sockets make the other agents' requests queue, and a
  // request queued past the 3 s connect timeout fails (KILN_S3_TIMEOUT).
  const shared = a.sharedStore ? { store: createReleaseStore(createS3Client(a.location), a.location.bucket, ''), keys: [parsePublicKey(a.publicPem, 'bench key')] } : {};
  const jobs = []; // [commandId, t]: the install job of a command started (the frame was accepted)
  const results = []; // [commandId, t, outcome]: the result frame went out
  let connected = 0;
  const agents = [];
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const t0 = mono();
  for (let i = a.from; i < a.from + a.count; i++) {
    const config = parseAgentConfig(
      { instanceId: `fan-${String(i).padStart(5, '0')}`, imageId: 'img-bench', app: APP, channel: CHANNEL, s3: a.location, keys: [a.publicPem], controller: { url: a.url, credential: a.credential } },
      'bench config',
    );
    const agent = createAgent({
      root: path.join(a.rootsDir, `r${i}`),
      config,
      log,
      ...shared,
      service: benchService(),
      onEvent(e) {
        if (e.type === 'job' && e.job === 'command') jobs.push([e.commandId, mono()]);
        else if (e.type === 'sent' && e.message.type === 'result') results.push([e.message.result.commandId, mono(), e.message.result.outcome]);
        else if (e.type === 'connected') connected += e.connected ? 1 : -1;
      },
    });
    agents.push(agent);
  }
  for (let i = 0; i < agents.length; i += 50) await Promise.all(agents.slice(i, i + 50).map((ag) => ag.start()));
  await Promise.all(agents.map((ag) => ag.idle()));
  const deadline = mono() + 120_000;
  while (connected < agents.length && mono() < deadline) await sleep(100);
  const reports = await Promise.all(agents.map((ag) => ag.report()));
  const installed = {};
  for (const r of reports) installed[r.installed?.version ?? 'none'] = (installed[r.installed?.version ?? 'none'] ?? 0) + 1;
  profileOnRequest();
  process.send({ type: 'ready', pid: process.pid, connected, startMs: mono() - t0, installed, nofile: openFilesLimit() });
  process.on('message', async (m) => {
    if (m?.type === 'loop-reset') loopDelay.reset();
    else if (m?.type === 'events') {
      const loop = { p50: loopDelay.percentile(50) / 1e6, p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 };
      process.send({ type: 'events', jobs: jobs.filter(([id]) => id.startsWith(m.prefix)), results: results.filter(([id]) => id.startsWith(m.prefix)), connected, loop });
    } else if (m?.type === 'stop') {
      await Promise.all(agents.map((ag) => ag.stop()));
      process.exit(0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Child mode: idle clients speaking the agent protocol: a hello with a valid report, a ping every
// heartbeat period (as the agent does), the controller's pings answered (ws does), reconnect on close.
// ---------------------------------------------------------------------------------------------
async function clientsChild() {
  exitWithParent();
  const a = await fromParent('init');
  const { frame, parseFrame } = await import('@kiln/shared');
  const stats = { open: 0, hellos: 0, closes: 0, errors: 0, reconnects: 0, pingsSent: 0, pongs: 0, serverPings: 0, framesIn: 0 };
  const sockets = new Set();
  let stopping = false;
  const at = new Date().toISOString();
  const hello = (instanceId) =>
    frame({
      type: 'hello',
      report: {
        instanceId,
        imageId: 'img-bench',
        app: APP,
        channel: CHANNEL,
        agentVersion: '0.1.0',
        image: a.release,
        installed: { ...a.release, artifactSha256: a.artifactSha256, via: 'baked', installedAt: at },
        service: { active: true },
        tree: { status: 'ok', modified: 0, missing: 0, extra: 0, paths: [], checkedAt: at },
        operation: null,
        lastError: null,
        queued: 0,
        at,
      },
      results: [],
    });
  parseFrame(hello(`idle-${a.from}`), 'agent'); // the controller would refuse anything else

  function connect(instanceId) {
    return new Promise((resolve) => {
      const ws = new WebSocket(a.url, { headers: { authorization: `Bearer ${a.credential}`, 'x-kiln-instance': instanceId }, perMessageDeflate: false, handshakeTimeout: 30_000 });
      let beat;
      let settled = false;
      const settle = (ok) => !settled && ((settled = true), resolve(ok));
      ws.on('open', () => {
        stats.open++;
        sockets.add(ws);
        ws.send(hello(instanceId), (err) => {
          if (!err) stats.hellos++;
          settle(!err);
        });
        beat = setInterval(() => {
          stats.pingsSent++;
          ws.ping();
        }, a.heartbeatMs);
      });
      ws.on('pong', () => stats.pongs++);
      ws.on('ping', () => stats.serverPings++);
      ws.on('message', () => stats.framesIn++);
      ws.on('error', () => stats.errors++);
      ws.on('close', () => {
        clearInterval(beat);
        if (sockets.delete(ws)) stats.open--;
        stats.closes++;
        settle(false);
        if (!stopping) {
          stats.reconnects++;
          setTimeout(() => connect(instanceId), 1_000 + Math.random() * 1_000);
        }
      });
    });
  }

  const t0 = mono();
  let next = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: a.concurrency }, async () => {
      while (next < a.count) {
        const i = a.from + next++;
        if (!(await connect(`idle-${String(i).padStart(5, '0')}`))) failed++;
      }
    }),
  );
  process.send({ type: 'ready', pid: process.pid, connectMs: mono() - t0, failed, nofile: openFilesLimit(), ...stats });
  process.on('message', async (m) => {
    if (m?.type === 'count') process.send({ type: 'count', ...stats });
    else if (m?.type === 'stop') {
      stopping = true;
      for (const ws of sockets) ws.terminate();
      process.exit(0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------
async function main() {
  const { values: opt } = parseArgs({
    options: {
      agents: { type: 'string', default: '1000' },
      'agent-procs': { type: 'string', default: '4' },
      runs: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
      'release-kib': { type: 'string', default: '1024' },
      idle: { type: 'string', default: '10000' },
      'client-procs': { type: 'string', default: '4' },
      'idle-runs': { type: 'string', default: '3' },
      window: { type: 'string', default: '60' },
      settle: { type: 'string', default: '10' },
      'status-runs': { type: 'string', default: '5' },
      skip: { type: 'string', default: '' },
      'json-out': { type: 'string', default: 'bench-results/fanout.json' },
      'keep-temp': { type: 'boolean', default: false },
      /** extra Node options for the agent processes, or the controller's (diagnostics, e.g. --cpu-prof) */
      'agent-node-arg': { type: 'string', multiple: true, default: [] },
      'controller-node-arg': { type: 'string', multiple: true, default: [] },
      /** CPU profiles of the controller and agent processes during the last deployment go here */
      'profile-dir': { type: 'string' },
      'quiet-wait': { type: 'string', default: '60' },
      'shared-store': { type: 'boolean', default: false },
      'poll-ms': { type: 'string', default: '250' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (opt.help) {
    printUsage(SELF);
    process.exit(0);
  }
  const int = intOption(opt);
  const AGENTS = int('agents', 1);
  const AGENT_PROCS = Math.min(int('agent-procs', 1), AGENTS);
  const RUNS = int('runs', 1);
  const WARMUP = int('warmup', 0);
  const RELEASE_KIB = int('release-kib', 1);
  const IDLE = int('idle', 1);
  const CLIENT_PROCS = Math.min(int('client-procs', 1), IDLE);
  const IDLE_RUNS = int('idle-runs', 1);
  const WINDOW_S = int('window', 1);
  const SETTLE_S = int('settle', 0);
  const STATUS_RUNS = int('status-runs', 1);
  const CHILD_NODE_ARGS = { agents: opt['agent-node-arg'], controller: opt['controller-node-arg'] };
  const QUIET_WAIT_S = int('quiet-wait', 0);
  const POLL_MS = int('poll-ms', 10);
  const SKIP = new Set(opt.skip.split(',').filter(Boolean));
  for (const s of SKIP) if (!['fanout', 'idle'].includes(s)) (console.error(`--skip ${s}: fanout or idle`), process.exit(2));

  const shared = await import('@kiln/shared');
  const { loadCommands } = await import('@kiln/controller');
  const { createLogger, createReleaseStore, createS3Client, formatTable, generateReleaseKeyPair, parsePrivateKey, parsePublicKey, promoteRelease, publishRelease } = shared;

  const benchStart = mono();
  const loadStart = os.loadavg();
  const base = await mkdtemp(path.join(os.tmpdir(), 'kiln-bench-fanout-'));
  const log = createLogger({ level: 'warn', name: 'bench' });
  /** every process this benchmark started, by pid */
  const children = new Set();

  async function stopChild(child, graceMs = 15_000) {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    if (child.connected) child.send({ type: 'stop' });
    else process.kill(child.pid, 'SIGTERM');
    if (await Promise.race([gone.then(() => true), sleep(graceMs).then(() => false)])) return;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {}
    await gone;
  }

  const cleanup = cleanupOnce(async () => {
    // S3 last: agents and the controller talk to it while they stop
    const all = [...children];
    await Promise.all(all.filter((c) => c.mode !== 's3').map((c) => stopChild(c)));
    await Promise.all(all.filter((c) => c.mode === 's3').map((c) => stopChild(c)));
    if (opt['keep-temp']) say(`kept ${base}`);
    else await rm(base, { recursive: true, force: true, maxRetries: 3 }).catch((err) => say(`could not remove ${base}: ${err.message}`));
  });

  let logNo = 0;
  /**
   * A child of this script in `mode`, with an IPC channel. Started through sh so that its open-files
   * limit is raised to the hard limit first (sh `exec`s node, so the pid is node's).
   */
  function startChild(mode, init) {
    const logFile = path.join(base, `${mode}-${++logNo}.log`);
    const out = openSync(logFile, 'a');
    const child = spawn('/bin/sh', ['-c', 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', process.execPath, ...NODE_ARGS, ...(CHILD_NODE_ARGS[mode] ?? []), SELF, `--child-${mode}`], {
      env: CHILD_ENV,
      stdio: ['ignore', out, out, 'ipc'],
    });
    closeSync(out);
    child.mode = mode;
    child.logFile = logFile;
    children.add(child);
    child.once('exit', () => children.delete(child));
    child.send({ type: 'init', ...init });
    return child;
  }

  const ask = async (child, type, extra = {}, ms) => {
    const reply = nextMessage(child, type, ms);
    child.send({ type, ...extra });
    return reply;
  };

  async function api(url, method, p, body) {
    const res = await fetch(url + p, {
      method,
      headers: { authorization: `Bearer ${OPERATOR}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    const parsed = text ? JSON.parse(text) : undefined;
    if (res.status >= 300) throw new Error(`${method} ${p}: ${res.status} ${text.slice(0, 500)}`);
    return parsed;
  }

  async function startController(location, prefix, pair) {
    const child = startChild('controller', { location, prefix, privatePem: pair.privatePem, publicPem: pair.publicPem });
    const ready = await nextMessage(child, 'ready', 60_000);
    child.realPid = ready.pid;
    if (ready.pid !== child.pid) say(`note: the controller's pid is ${ready.pid}, its launcher's ${child.pid}`);
    return { child, pid: ready.pid, url: `http://127.0.0.1:${ready.port}`, agentsUrl: `ws://127.0.0.1:${ready.port}/v1/agents`, nofile: ready.nofile };
  }

  /** CPU ticks of this process and every child it started (the processes of the benchmark). */
  function ourTicks() {
    let n = Math.round(((process.cpuUsage().user + process.cpuUsage().system) / 1e6) * CLK_TCK);
    for (const c of children) {
      try {
        n += procTicks(c.pid, true);
      } catch {}
    }
    return n;
  }

  /** Cores used by processes not of this benchmark between two snapshots `{ machine, ours, t }`. */
  const othersCores = (a, b) => r2(Math.max(0, b.machine.busy - a.machine.busy - (b.ours - a.ours)) / CLK_TCK / ((b.t - a.t) / 1000));
  const snap = () => ({ machine: machineTicks(), ours: ourTicks(), t: mono() });

  /** Waits (at most --quiet-wait s) until other processes use less than half a core over 3 s; returns what they used last. */
  async function quietWait(what) {
    const deadline = mono() + QUIET_WAIT_S * 1000;
    let waited = false;
    for (;;) {
      const a = snap();
      await sleep(3_000);
      const others = othersCores(a, snap());
      if (others < 0.5 || mono() >= deadline) {
        if (waited || others >= 0.5) say(`${what}: other processes use ${others} cores${others >= 0.5 ? ` (still, after ${QUIET_WAIT_S} s): the figures may be noisy` : ''}`);
        return others;
      }
      if (!waited) say(`${what}: other processes use ${others} cores; waiting up to ${QUIET_WAIT_S} s for them to calm down`);
      waited = true;
    }
  }

  /** RSS samples (1 s apart) and CPU of `pid` over `seconds`, with the machine's CPU in the same window. */
  async function sampleProcess(pid, seconds) {
    const c0 = procTicks(pid);
    const m0 = machineTicks();
    const o0 = snap();
    const t0 = mono();
    const rss = [];
    while (mono() - t0 < seconds * 1000) {
      rss.push(procMem(pid));
      await sleep(1000);
    }
    const s = (mono() - t0) / 1000;
    const m1 = machineTicks();
    const ticks = procTicks(pid) - c0;
    const rssMiB = rss.map((m) => m.rssKiB / 1024);
    return {
      seconds: r1(s),
      rssMiB: { median: r1(median(rssMiB)), max: r1(Math.max(...rssMiB)), min: r1(Math.min(...rssMiB)) },
      anonMiB: r1(median(rss.map((m) => m.anonKiB)) / 1024),
      fileMiB: r1(median(rss.map((m) => m.fileKiB)) / 1024),
      cpuTicks: ticks,
      cpuPercentOfCore: r2((100 * ticks) / CLK_TCK / s),
      machineBusyCores: r2((m1.busy - m0.busy) / CLK_TCK / s),
      stealCores: r2((m1.steal - m0.steal) / CLK_TCK / s),
      othersCores: othersCores(o0, snap()),
    };
  }

  /** A release of `kib` KiB: random bytes (so the artifact is as large as the tree), kiln.json, VERSION. */
  async function writeApp(dir, version, kib) {
    const { randomBytes } = await import('node:crypto');
    await mkdir(path.join(dir, 'lib'), { recursive: true });
    await writeFile(path.join(dir, 'kiln.json'), JSON.stringify({ service: { command: ['node', 'server.js'] }, health: { type: 'none' } }));
    await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
    const files = Math.max(1, Math.round(kib / 64));
    for (let i = 0; i < files; i++) await writeFile(path.join(dir, 'lib', `blob${i}.bin`), randomBytes(Math.round((kib * 1024) / files)));
  }

  const results = { fanout: null, idle: null };
  const machine = {
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpu: /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? 'unknown',
    memGiB: r1(os.totalmem() / 1024 ** 3),
    node: process.version,
    kernel: os.release(),
    nofile: openFilesLimit(),
  };
  try {
    // --- the S3 endpoint, keys and releases: 1.0.0 on the channel, one more per deployment ---
    const s3 = startChild('s3', { dir: path.join(base, 's3') });
    const { location, pid: s3Pid } = await nextMessage(s3, 'ready', 60_000);
    say(`temp dir ${base}; S3 at ${location.endpoint}; ${machine.nproc} cores, load average ${loadStart.map(r2).join(' ')}`);
    const pair = generateReleaseKeyPair();
    const key = parsePrivateKey(pair.privatePem, 'bench key');
    const keys = [parsePublicKey(pair.publicPem, 'bench key')];
    const store = createReleaseStore(createS3Client(location), location.bucket, '');
    const deploys = SKIP.has('fanout') ? 0 : WARMUP + RUNS;
    const releases = [];
    for (let i = 0; i <= deploys; i++) {
      const version = `1.0.${i}`;
      const src = path.join(base, `src-${version}`);
      await writeApp(src, version, RELEASE_KIB);
      const pub = await publishRelease({ store, app: APP, version, source: src, key, log });
      await rm(src, { recursive: true, force: true });
      releases.push({ version, seq: pub.manifest.seq, manifestSha256: pub.manifestSha256, artifactSha256: pub.manifest.artifact.sha256, artifactBytes: pub.manifest.artifact.size, unpackedBytes: pub.manifest.unpackedSize, entries: pub.manifest.files.length });
    }
    await promoteRelease({ store, app: APP, version: '1.0.0', channel: CHANNEL, key, keys, ttlMs: 7 * 86_400_000 });
    const rel = releases[0];
    say(`published ${releases.length} release(s): ${rel.entries} entries, ${rel.unpackedBytes} bytes unpacked, artifact ${rel.artifactBytes} bytes`);

    // --- 1. hotfix fan-out ---
    if (!SKIP.has('fanout')) {
      const ctl = await startController(location, '', pair);
      const { agentCredential } = await api(ctl.url, 'POST', '/v1/fleets', { name: 'fan', app: APP, channel: CHANNEL });
      // One root installed by a real agent boot (1.0.0 from the channel), copied for every agent.
      const template = path.join(base, 'template-root');
      const agentPackage = await import('@kiln/agent');
      const templateConfig = { instanceId: 'i-template', imageId: 'img-bench', app: APP, channel: CHANNEL, s3: location, keys: [pair.publicPem] };
      await installTemplateRoot({ agent: agentPackage, template, config: templateConfig, store, keys, log, version: '1.0.0' });
      const rootsDir = path.join(base, 'roots');
      let t = mono();
      await copyRoots(template, rootsDir, AGENTS);
      say(`fan-out: ${AGENTS} roots copied from one installed root in ${((mono() - t) / 1000).toFixed(1)} s`);
      t = mono();
      const procs = [];
      const per = Math.ceil(AGENTS / AGENT_PROCS);
      for (let p = 0; p < AGENT_PROCS; p++) {
        const from = p * per;
        const count = Math.min(per, AGENTS - from);
        if (count > 0) procs.push(startChild('agents', { rootsDir, from, count, location, publicPem: pair.publicPem, url: ctl.agentsUrl, credential: agentCredential, sharedStore: opt['shared-store'] }));
      }
      const ready = await Promise.all(procs.map((c) => nextMessage(c, 'ready', 300_000)));
      procs.forEach((c, i) => (c.realPid = ready[i].pid));
      const startS = (mono() - t) / 1000;
      const before = await api(ctl.url, 'GET', '/v1/fleets/fan/instances');
      const onV1 = before.instances.filter((r) => r.connected && r.installed === '1.0.0').length;
      say(`fan-out: ${AGENT_PROCS} agent processes up in ${startS.toFixed(1)} s; the controller sees ${before.instances.length} instances, ${onV1} connected on 1.0.0`);
      if (onV1 !== AGENTS) throw new Error(`only ${onV1} of ${AGENTS} agents are connected on 1.0.0 before the deployment`);

      const runs = [];
      let { frames: lastFrames, s3Ops: lastOps } = await ask(ctl.child, 'sends', { prefix: '-' });
      const diffCounts = (b, a) => Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - (a[k] ?? 0)]));
      const diffOps = (b, a) => Object.fromEntries(Object.entries(b).map(([k, v]) => [k, { n: v.n - (a[k]?.n ?? 0), bytes: v.bytes - (a[k]?.bytes ?? 0) }]).filter(([, v]) => v.n > 0));
      for (let k = 1; k <= deploys; k++) {
        const version = releases[k].version;
        const warm = k <= WARMUP;
        await sleep(2_000);
        const quietBefore = await quietWait(`fan-out ${warm ? 'warm-up' : `run ${k - WARMUP}`}`);
        const profiling = opt['profile-dir'] && k === deploys;
        if (profiling) await Promise.all([ctl.child, ...procs].map((c) => ask(c, 'profile-start')));
        for (const c of procs) c.send({ type: 'loop-reset' });
        const overflows0 = listenOverflows();
        const o0 = snap();
        const load = os.loadavg()[0];
        const m0 = machineTicks();
        const c0 = procTicks(ctl.pid);
        const a0 = procs.map((c) => procTicks(c.realPid, true));
        const s0 = procTicks(s3Pid);
        const wall0 = Date.now();
        const tPost = mono();
        const { deployment } = await api(ctl.url, 'POST', '/v1/deployments', { fleet: 'fan', version, batch: { percent: 100 }, healthTimeoutMs: 120_000, maxFailures: 0 });
        const tCreated = mono();
        const wallCreated = Date.now();
        let rec = deployment;
        let ctlPeakKiB = 0;
        while (rec.state === 'running') {
          await sleep(POLL_MS);
          ctlPeakKiB = Math.max(ctlPeakKiB, procMem(ctl.pid).rssKiB);
          ({ deployment: rec } = await api(ctl.url, 'GET', `/v1/deployments/${deployment.id}`));
        }
        const tSeen = mono();
        const m1 = machineTicks();
        const others = othersCores(o0, snap());
        if (profiling) {
          await mkdir(opt['profile-dir'], { recursive: true });
          await Promise.all([ctl.child, ...procs].map((c, i) => ask(c, 'profile-stop', { file: path.resolve(opt['profile-dir'], `${i ? `agents-${i}` : 'controller'}.cpuprofile`) })));
          say(`CPU profiles written to ${opt['profile-dir']}`);
        }
        const cpu = (a, b) => r2((b - a) / CLK_TCK);
        // the deployment's own commands (ids DEPLOYMENT.INSTANCE), not the rollback ones (DEPLOYMENT.rb.INSTANCE)
        const prefix = `${deployment.id}.fan-`;
        const { sends, frames, s3Ops } = await ask(ctl.child, 'sends', { prefix });
        const events = await Promise.all(procs.map((c) => ask(c, 'events', { prefix })));
        const jobs = new Map(events.flatMap((e) => e.jobs));
        const done = new Map(events.flatMap((e) => e.results.map(([id, at, outcome]) => [id, { at, outcome }])));
        const sendAt = new Map(sends);
        const delivery = [];
        const fromCreated = [];
        const install = [];
        for (const [id, at] of jobs) {
          if (sendAt.has(id)) delivery.push(at - sendAt.get(id));
          fromCreated.push(at - tCreated);
          if (done.has(id)) install.push(done.get(id).at - at);
        }
        const sendTimes = sends.map(([, at]) => at);
        // the first command to land in each agent process: what an agent alone on its host would see
        const firstPerProcess = events.map((e) => Math.min(...e.jobs.filter(([id]) => sendAt.has(id)).map(([id, at]) => at - sendAt.get(id)))).filter(Number.isFinite).map(r1);
        const steps = {};
        const errors = {};
        for (const i of Object.values(rec.instances)) {
          steps[i.step] = (steps[i.step] ?? 0) + 1;
          if (i.error) errors[`${i.error.code}: ${i.error.message.replace(/\d+/g, 'N').slice(0, 160)}`] = (errors[`${i.error.code}: ${i.error.message.replace(/\d+/g, 'N').slice(0, 160)}`] ?? 0) + 1;
        }
        const outcomes = {};
        for (const d of done.values()) outcomes[d.outcome] = (outcomes[d.outcome] ?? 0) + 1;
        const finished = Date.parse(rec.finishedAt);
        const run = {
          version,
          warmup: warm,
          state: rec.state,
          verdict: rec.verdict,
          steps,
          errors,
          outcomes,
          /** POST sent (bench) → the record's finishedAt (controller), both wall clocks of this host */
          allHealthyMs: finished - wall0,
          /** the record's own span: createdAt → finishedAt */
          recordSpanMs: finished - Date.parse(rec.createdAt),
          postRoundTripMs: r1(tCreated - tPost),
          /** POST sent → the bench's poll (every 250 ms) saw the verdict */
          seenByPollMs: r1(tSeen - tPost),
          firstSendAfterCreatedMs: sendTimes.length ? r1(Math.min(...sendTimes) - tCreated) : null,
          sendSpreadMs: sendTimes.length ? r1(Math.max(...sendTimes) - Math.min(...sendTimes)) : null,
          commandsSent: sends.length,
          /** frames from agents the hub handled, and the controller's own S3 requests, since the previous run */
          framesIn: diffCounts(frames, lastFrames),
          controllerS3: diffOps(s3Ops, lastOps),
          jobsStarted: jobs.size,
          resultsSent: done.size,
          lastResultAfterPostMs: done.size ? r1(Math.max(...[...done.values()].map((d) => d.at)) - tPost) : null,
          deliveryMs: dist(delivery),
          deliveryFirstPerProcessMs: firstPerProcess,
          createdToJobMs: dist(fromCreated),
          installMs: dist(install),
          cpuSeconds: { controller: cpu(c0, procTicks(ctl.pid)), agents: r2(procs.reduce((n, c, i) => n + (procTicks(c.realPid, true) - a0[i]) / CLK_TCK, 0)), s3: cpu(s0, procTicks(s3Pid)), machine: r2((m1.busy - m0.busy) / CLK_TCK), steal: r2((m1.steal - m0.steal) / CLK_TCK) },
          controllerPeakRssMiB: r1(ctlPeakKiB / 1024),
          loadAvg1: r2(load),
          /** accept-queue overflows on the host during the run (the loopback S3's and the controller's sockets) */
          listenOverflows: listenOverflows() - overflows0,
          /** event-loop delay in the agent processes during the run (ms): many agents share each loop */
          agentLoopDelayMs: { p99: r1(Math.max(...events.map((e) => e.loop.p99))), max: r1(Math.max(...events.map((e) => e.loop.max))) },
          othersCoresBefore: quietBefore,
          othersCoresDuring: others,
          wallCreatedMs: wallCreated - wall0,
        };
        lastFrames = frames;
        lastOps = s3Ops;
        runs.push(run);
        say(
          `fan-out ${warm ? 'warm-up' : `run ${k - WARMUP}`}: ${version} ${rec.state} (${JSON.stringify(steps)}) in ${(run.allHealthyMs / 1000).toFixed(2)} s after the POST; delivery p50 ${run.deliveryMs?.p50} p99 ${run.deliveryMs?.p99} ms; created→job p50 ${run.createdToJobMs?.p50} p99 ${run.createdToJobMs?.p99} ms; install p50 ${run.installMs?.p50} ms; CPU s ${JSON.stringify(run.cpuSeconds)}; others used ${others} cores; load ${run.loadAvg1}; accept-queue overflows ${run.listenOverflows}; agent event-loop delay p99 ${run.agentLoopDelayMs.p99} max ${run.agentLoopDelayMs.max} ms; frames in ${JSON.stringify(run.framesIn)}; controller S3 ${JSON.stringify(run.controllerS3)}`,
        );
        if (rec.state !== 'succeeded') say(`note: the deployment ended ${rec.state}: ${rec.verdict}; errors ${JSON.stringify(errors)}`);
      }
      // A deployment that failed (and rolled back) did not bring everything healthy: its figures stay in
      // the runs, out of the medians.
      const all = runs.filter((r) => !r.warmup);
      const measured = all.some((r) => r.state === 'succeeded') ? all.filter((r) => r.state === 'succeeded') : all;
      const med = (f) => r1(median(measured.map(f).filter((x) => x !== null && x !== undefined)));
      results.fanout = {
        agents: AGENTS,
        agentProcesses: AGENT_PROCS,
        release: { entries: rel.entries, unpackedBytes: rel.unpackedBytes, artifactBytes: rel.artifactBytes, health: 'none' },
        s3Clients: opt['shared-store'] ? 'one per agent process' : 'one per agent (each agent makes its own from its config, as on a host)',
        setup: 'roots pre-seeded: one root installed 1.0.0 by a real agent boot, copied for every agent; each agent booted on its copy (channel resolved, nothing to install) and connected; deployment k installs 1.0.k over 1.0.(k-1)',
        service: "in-memory ServiceManager (restart → active; status → active), release health {type:'none'}",
        agentsStartSeconds: r1(startS),
        runs,
        median: {
          allHealthyMs: med((r) => r.allHealthyMs),
          recordSpanMs: med((r) => r.recordSpanMs),
          deliveryP50Ms: med((r) => r.deliveryMs?.p50),
          deliveryP99Ms: med((r) => r.deliveryMs?.p99),
          deliveryMaxMs: med((r) => r.deliveryMs?.max),
          deliveryFirstPerProcessMs: med((r) => median(r.deliveryFirstPerProcessMs)),
          lastResultAfterPostMs: med((r) => r.lastResultAfterPostMs),
          agentCpuMsPerInstall: r1(median(measured.map((r) => (1000 * r.cpuSeconds.agents) / Math.max(1, r.resultsSent)))),
          recordPuts: median(measured.map((r) => r.controllerS3.PutObjectCommand?.n ?? 0)),
          recordPutMiB: r1(median(measured.map((r) => (r.controllerS3.PutObjectCommand?.bytes ?? 0) / MiB))),
          framesPerInstance: r1(median(measured.map((r) => Object.values(r.framesIn).reduce((n, v) => n + v, 0) / AGENTS))),
          createdToJobP50Ms: med((r) => r.createdToJobMs?.p50),
          createdToJobP99Ms: med((r) => r.createdToJobMs?.p99),
          firstSendAfterCreatedMs: med((r) => r.firstSendAfterCreatedMs),
          sendSpreadMs: med((r) => r.sendSpreadMs),
          installP50Ms: med((r) => r.installMs?.p50),
          installP99Ms: med((r) => r.installMs?.p99),
          controllerCpuSeconds: r2(median(measured.map((r) => r.cpuSeconds.controller))),
          agentsCpuSeconds: r2(median(measured.map((r) => r.cpuSeconds.agents))),
          s3CpuSeconds: r2(median(measured.map((r) => r.cpuSeconds.s3))),
          machineCpuSeconds: r2(median(measured.map((r) => r.cpuSeconds.machine))),
        },
        allSucceeded: all.every((r) => r.state === 'succeeded'),
        succeededRuns: all.filter((r) => r.state === 'succeeded').length,
        measuredRuns: all.length,
      };
      await Promise.all(procs.map((c) => stopChild(c, 60_000)));
      await stopChild(ctl.child);
      await rm(rootsDir, { recursive: true, force: true });
      await rm(template, { recursive: true, force: true });
    }

    // --- 2. and 3. idle agents, and status ---
    if (!SKIP.has('idle')) {
      const statusCmd = (await loadCommands()).find((c) => c.name === 'status');
      const idleRuns = [];
      for (let k = 1; k <= IDLE_RUNS; k++) {
        const ctl = await startController(location, `idle-${k}/`, pair);
        const { agentCredential } = await api(ctl.url, 'POST', '/v1/fleets', { name: 'idle', app: APP, channel: CHANNEL });
        // the CLI on a fleet with no instance: its start-up and one small request, for scale
        if (statusCmd) await api(ctl.url, 'POST', '/v1/fleets', { name: 'empty', app: APP, channel: CHANNEL });
        await sleep(5_000);
        await quietWait(`idle run ${k}, baseline`);
        const baseline = await sampleProcess(ctl.pid, 10);
        say(`idle run ${k}: controller with no agent: RSS ${baseline.rssMiB.median} MiB, CPU ${baseline.cpuPercentOfCore}% of a core`);
        const t = mono();
        const procs = [];
        const per = Math.ceil(IDLE / CLIENT_PROCS);
        for (let p = 0; p < CLIENT_PROCS; p++) {
          const from = p * per;
          const count = Math.min(per, IDLE - from);
          if (count > 0) procs.push(startChild('clients', { url: ctl.agentsUrl, credential: agentCredential, from, count, concurrency: 50, heartbeatMs: 15_000, release: { version: rel.version, seq: rel.seq, manifestSha256: rel.manifestSha256 }, artifactSha256: rel.artifactSha256 }));
        }
        const ready = await Promise.all(procs.map((c) => nextMessage(c, 'ready', 600_000)));
        procs.forEach((c, i) => (c.realPid = ready[i].pid));
        const connectS = (mono() - t) / 1000;
        // the first status call (also the check that the controller sees them all)
        const first = await timeStatus(ctl.url);
        say(`idle run ${k}: ${IDLE} clients connected in ${connectS.toFixed(1)} s (${ready.reduce((n, r) => n + r.failed, 0)} failed); the controller lists ${first.instances} instances, ${first.connected} connected (first status ${first.totalMs} ms)`);
        await sleep(SETTLE_S * 1000);
        await quietWait(`idle run ${k}, window`);
        const c0 = await Promise.all(procs.map((c) => ask(c, 'count')));
        const profiling = opt['profile-dir'] && k === IDLE_RUNS;
        if (profiling) await ask(ctl.child, 'profile-start');
        const loaded = await sampleProcess(ctl.pid, WINDOW_S);
        if (profiling) {
          await mkdir(opt['profile-dir'], { recursive: true });
          await ask(ctl.child, 'profile-stop', { file: path.resolve(opt['profile-dir'], 'controller-idle.cpuprofile') });
        }
        const c1 = await Promise.all(procs.map((c) => ask(c, 'count')));
        const sum = (xs, f) => xs.reduce((n, x) => n + x[f], 0);
        const traffic = { pingsSent: sum(c1, 'pingsSent') - sum(c0, 'pingsSent'), pongs: sum(c1, 'pongs') - sum(c0, 'pongs'), serverPings: sum(c1, 'serverPings') - sum(c0, 'serverPings'), closes: sum(c1, 'closes'), open: sum(c1, 'open') };
        say(`idle run ${k}: ${WINDOW_S} s with ${traffic.open} open: RSS ${loaded.rssMiB.median} MiB (max ${loaded.rssMiB.max}), CPU ${loaded.cpuPercentOfCore}% of a core (others used ${loaded.othersCores} cores); ${traffic.pingsSent} client pings, ${traffic.serverPings} controller pings, ${traffic.closes} closes; machine busy ${loaded.machineBusyCores} cores`);
        const status = [];
        for (let i = 0; i < STATUS_RUNS; i++) status.push(await timeStatus(ctl.url));
        const cli = [];
        const cliEmpty = [];
        if (statusCmd) {
          for (let i = 0; i < Math.min(3, STATUS_RUNS); i++) cli.push(timeCli(statusCmd, ctl.url, 'idle'));
          for (let i = 0; i < Math.min(3, STATUS_RUNS); i++) cliEmpty.push(timeCli(statusCmd, ctl.url, 'empty'));
          for (const c of [...cli, ...cliEmpty]) if (c.exit !== 0) say(`note: kiln status exited ${c.exit}: ${c.stderr}`);
        }
        const after = procMem(ctl.pid);
        say(`idle run ${k}: status median ${r1(median(status.map((s) => s.totalMs)))} ms (HTTP ${r1(median(status.map((s) => s.httpMs)))}, ${status[0].bytes} bytes)${cli.length ? `; CLI ${r1(median(cli.map((c) => c.ms)))} ms (a fleet with no instance: ${r1(median(cliEmpty.map((c) => c.ms)))} ms)` : ''}`);
        idleRuns.push({
          run: k,
          clients: IDLE,
          clientProcesses: CLIENT_PROCS,
          connectSeconds: r1(connectS),
          failedConnects: ready.reduce((n, r) => n + r.failed, 0),
          controllerNofile: ctl.nofile,
          clientNofile: ready[0].nofile,
          baseline,
          loaded,
          traffic,
          firstStatus: first,
          status,
          cli,
          cliEmpty,
          rssAfterStatusMiB: r1(after.rssKiB / 1024),
          peakRssMiB: r1(after.hwmKiB / 1024),
        });
        await Promise.all(procs.map((c) => stopChild(c)));
        await stopChild(ctl.child);
      }
      const med = (f) => r1(median(idleRuns.map(f)));
      results.idle = {
        clients: IDLE,
        clientProcesses: CLIENT_PROCS,
        what: 'clients speaking the agent protocol: hello with a valid report, a ping every 15 s, the controller pings answered by ws, reconnect on close',
        windowSeconds: WINDOW_S,
        settleSeconds: SETTLE_S,
        statusVia: statusCmd ? 'the kiln status CLI, and the API call plus formatTable' : 'GET /v1/fleets/idle/instances, then the table rendered with formatTable (no `kiln status` command yet)',
        runs: idleRuns,
        median: {
          baselineRssMiB: med((r) => r.baseline.rssMiB.median),
          baselineCpuPercent: r2(median(idleRuns.map((r) => r.baseline.cpuPercentOfCore))),
          rssMiB: med((r) => r.loaded.rssMiB.median),
          rssMaxMiB: med((r) => r.loaded.rssMiB.max),
          peakRssMiB: med((r) => r.peakRssMiB),
          cpuPercent: r2(median(idleRuns.map((r) => r.loaded.cpuPercentOfCore))),
          connectSeconds: med((r) => r.connectSeconds),
          statusMs: med((r) => median(r.status.map((s) => s.totalMs))),
          statusHttpMs: med((r) => median(r.status.map((s) => s.httpMs))),
          statusRenderMs: med((r) => median(r.status.map((s) => s.renderMs))),
          statusBytes: median(idleRuns.map((r) => r.status[0].bytes)),
          firstStatusMs: med((r) => r.firstStatus.totalMs),
          cliMs: idleRuns[0].cli.length ? med((r) => median(r.cli.map((c) => c.ms))) : null,
          cliEmptyFleetMs: idleRuns[0].cliEmpty.length ? med((r) => median(r.cliEmpty.map((c) => c.ms))) : null,
          cliStdoutBytes: idleRuns[0].cli[0]?.stdoutBytes ?? null,
        },
      };
    }
  } catch (err) {
    say(`FAILED: ${err.stack ?? err}`);
    await cleanup();
    process.exit(1);
  }
  await cleanup();

  /** `kiln status` the API way: GET the instances, parse, render the table and the summary line. */
  async function timeStatus(url) {
    const t0 = mono();
    const res = await fetch(`${url}/v1/fleets/idle/instances`, { headers: { authorization: `Bearer ${OPERATOR}` } });
    const text = await res.text();
    const t1 = mono();
    const body = JSON.parse(text);
    const t2 = mono();
    const table = formatTable(
      ['INSTANCE', 'CONNECTED', 'IMAGE', 'BAKED', 'DESIRED', 'INSTALLED', 'VIA', 'TREE', 'LAST ERROR'],
      body.instances.map((r) => [r.instanceId, r.connected ? 'yes' : 'no', r.imageId ?? '-', r.image ?? '-', r.desired ?? '-', r.installed ?? '-', r.via ?? '-', r.tree, r.lastError ?? '-']),
    );
    const out = `${table}${body.summary.line}\n`;
    const t3 = mono();
    return { totalMs: r1(t3 - t0), httpMs: r1(t1 - t0), parseMs: r1(t2 - t1), renderMs: r1(t3 - t2), bytes: text.length, outputBytes: out.length, instances: body.instances.length, connected: body.instances.filter((r) => r.connected).length };
  }

  /** `kiln status idle` as a child process, end to end (Node start-up included). */
  function timeCli(cmd, url, fleet) {
    const args = [...NODE_ARGS, CLI, 'status', fleet];
    const opts = cmd.options ?? {};
    if ('controller' in opts) args.push('--controller', url);
    else if ('url' in opts) args.push('--url', url);
    const t0 = mono();
    const r = spawnSync(process.execPath, args, { cwd: base, env: { ...CHILD_ENV, KILN_CONTROLLER: url, KILN_TOKEN: OPERATOR, KILN_OPERATOR_TOKEN: OPERATOR }, encoding: 'utf8', maxBuffer: 64 * MiB });
    const ms = r1(mono() - t0);
    return { ms, exit: r.status, stdoutBytes: r.stdout?.length ?? 0, stderr: r.status === 0 ? '' : (r.stderr ?? '').slice(0, 500) };
  }

  // ---------------------------------------------------------------------------------------------
  // Report
  // ---------------------------------------------------------------------------------------------
  const git = (() => {
    const run = (...args) => spawnSync('git', args, { cwd: TOP, encoding: 'utf8' });
    const head = run('rev-parse', '--short', 'HEAD');
    const dirty = run('status', '--porcelain', '--', 'packages');
    return head.status === 0 ? { commit: head.stdout.trim(), uncommittedInPackages: dirty.stdout.split('\n').filter(Boolean).map((l) => l.slice(3)) } : null;
  })();
  machine.loadavgStart = loadStart.map(r2);
  machine.loadavgEnd = os.loadavg().map(r2);
  const goals = {};
  const F = results.fanout;
  const I = results.idle;
  if (F) {
    goals.fanout = { goal: '<= 10 s', valueMs: F.median.allHealthyMs, ratio: r2(F.median.allHealthyMs / 10_000), pass: F.allSucceeded && F.median.allHealthyMs <= 10_000 };
    goals.delivery = { goal: 'p99 <= 100 ms', valueMs: F.median.deliveryP99Ms, ratio: r2(F.median.deliveryP99Ms / 100), pass: F.median.deliveryP99Ms <= 100 };
  }
  if (I) {
    goals.idleRss = { goal: '<= 400 MB (381.5 MiB)', valueMiB: I.median.rssMaxMiB, ratio: r2(I.median.rssMaxMiB / (400 * MB_IN_MiB)), pass: I.median.rssMaxMiB <= 400 * MB_IN_MiB };
    goals.idleCpu = { goal: '<= 10% of a core', value: I.median.cpuPercent, ratio: r2(I.median.cpuPercent / 10), pass: I.median.cpuPercent <= 10 };
    goals.status = { goal: '<= 1 s', valueMs: I.median.cliMs ?? I.median.statusMs, ratio: r2((I.median.cliMs ?? I.median.statusMs) / 1000), pass: (I.median.cliMs ?? I.median.statusMs) <= 1000 };
  }
  const totalS = (mono() - benchStart) / 1000;
  const output = { bench: 'fanout', date: new Date().toISOString(), command: `node scripts/bench-fanout.mjs ${process.argv.slice(2).join(' ')}`.trim(), machine, git, ...results, goals, totalSeconds: r1(totalS) };
  const jsonOut = path.resolve(TOP, opt['json-out']);
  await mkdir(path.dirname(jsonOut), { recursive: true });
  await writeFile(jsonOut, JSON.stringify(output, null, 2) + '\n');

  const ok = (g) => `${g.pass ? 'met' : '**MISSED**'} (${g.ratio}× the goal)`;
  const lines = [];
  lines.push(`## bench:fanout — ${output.date}`);
  lines.push('');
  lines.push(`Machine: ${machine.nproc} cores (${machine.cpu}), ${machine.memGiB} GiB RAM, Node ${process.version}, open files ${machine.nofile?.soft}/${machine.nofile?.hard}. Load average at start ${machine.loadavgStart.join(' / ')}, at end ${machine.loadavgEnd.join(' / ')}.`);
  if (git) lines.push(`Code: commit ${git.commit}${git.uncommittedInPackages.length ? ` plus uncommitted changes in ${git.uncommittedInPackages.join(', ')}` : ''}.`);
  lines.push('');
  lines.push('| measure | median | runs | goal |');
  lines.push('|---|---|---|---|');
  if (F) {
    const m = F.runs.filter((r) => !r.warmup);
    const list = (f) => m.map(f).join(', ');
    lines.push(`| ${F.agents} agents, deployment POST → verdict succeeded (s) | ${r2(F.median.allHealthyMs / 1000)} | ${list((r) => `${r2(r.allHealthyMs / 1000)}${r.state === 'succeeded' ? '' : ` (${r.state})`}`)} | ≤ 10 s: ${ok(goals.fanout)} |`);
    lines.push(`| command delivery, controller send → agent install job started (ms) | p50 ${F.median.deliveryP50Ms}, p99 ${F.median.deliveryP99Ms} | p99 ${list((r) => r.deliveryMs?.p99)} | p99 ≤ 100 ms: ${ok(goals.delivery)} |`);
    lines.push(`| deployment created (POST answered) → agent install job started (ms) | p50 ${F.median.createdToJobP50Ms}, p99 ${F.median.createdToJobP99Ms} | p99 ${list((r) => r.createdToJobMs?.p99)} | |`);
    lines.push(`| POST answered → first command sent / first → last send (ms) | ${F.median.firstSendAfterCreatedMs} / ${F.median.sendSpreadMs} | | |`);
    lines.push(`| first command to land in each agent process, send → job (ms) | ${F.median.deliveryFirstPerProcessMs} | | |`);
    lines.push(`| install job → result sent, per agent (ms) | p50 ${F.median.installP50Ms}, p99 ${F.median.installP99Ms} | | |`);
    lines.push(`| POST → last agent's result frame (s) | ${r2(F.median.lastResultAfterPostMs / 1000)} | | |`);
    lines.push(`| agents' CPU per install (ms) / frames from agents per instance / record PUTs (MiB) | ${F.median.agentCpuMsPerInstall} / ${F.median.framesPerInstance} / ${F.median.recordPuts} (${F.median.recordPutMiB}) | | |`);
    if (!F.allSucceeded) lines.push(`| deployments that succeeded (the medians are theirs) | ${F.succeededRuns} of ${F.measuredRuns} | ${list((r) => r.state === 'succeeded' ? 'ok' : Object.entries(r.errors).map(([e, n]) => `${n}× ${e.split(':')[0]}`).join(' '))} | |`);
    lines.push(`| CPU seconds per deployment: controller / agents / S3 / whole machine | ${F.median.controllerCpuSeconds} / ${F.median.agentsCpuSeconds} / ${F.median.s3CpuSeconds} / ${F.median.machineCpuSeconds} | | |`);
  }
  if (I) {
    const list = (f) => I.runs.map(f).join(', ');
    lines.push(`| controller RSS, ${I.clients} idle agents connected (MiB, max over ${I.windowSeconds} s) | ${I.median.rssMaxMiB} (median ${I.median.rssMiB}) | ${list((r) => r.loaded.rssMiB.max)} | ≤ 400 MB: ${ok(goals.idleRss)} |`);
    lines.push(`| controller RSS, no agent connected (baseline) | ${I.median.baselineRssMiB} | ${list((r) => r.baseline.rssMiB.median)} | |`);
    lines.push(`| controller CPU, ${I.clients} idle agents (% of a core over ${I.windowSeconds} s) | ${I.median.cpuPercent} | ${list((r) => r.loaded.cpuPercentOfCore)} | ≤ 10%: ${ok(goals.idleCpu)} |`);
    lines.push(`| controller CPU, no agent (baseline, % of a core over 10 s) | ${I.median.baselineCpuPercent} | ${list((r) => r.baseline.cpuPercentOfCore)} | |`);
    lines.push(`| \`kiln status\` for ${I.clients} instances: API call + table (ms) | ${I.median.statusMs} (HTTP ${I.median.statusHttpMs}, render ${I.median.statusRenderMs}; ${I.median.statusBytes} bytes) | ${list((r) => r1(median(r.status.map((s) => s.totalMs))))} | ${I.median.cliMs === null ? `≤ 1 s: ${ok(goals.status)}` : 'judged on the CLI'} |`);
    if (I.median.cliMs !== null) {
      lines.push(`| \`kiln status\` CLI end to end, ${I.clients} instances (ms) | ${I.median.cliMs} (${I.median.cliStdoutBytes} bytes out) | ${list((r) => r1(median(r.cli.map((c) => c.ms))))} | ≤ 1 s: ${ok(goals.status)} |`);
      lines.push(`| \`kiln status\` CLI end to end, a fleet with no instance (ms) | ${I.median.cliEmptyFleetMs} | ${list((r) => r1(median(r.cliEmpty.map((c) => c.ms))))} | |`);
    }
    lines.push(`| ${I.clients} clients connected in (s) / peak RSS of the controller (MiB) | ${I.median.connectSeconds} / ${I.median.peakRssMiB} | | |`);
  }
  lines.push('');
  lines.push(`Total bench time ${totalS.toFixed(0)} s. JSON: ${path.relative(TOP, jsonOut)}.`);
  console.log(lines.join('\n'));
}

const MODE = process.argv[2];
if (MODE === '--child-s3') await s3Child();
else if (MODE === '--child-controller') await controllerChild();
else if (MODE === '--child-agents') await agentsChild();
else if (MODE === '--child-clients') await clientsChild();
else await main();
