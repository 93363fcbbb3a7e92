#!/usr/bin/env node
// bench:agent — measures the agent goals against a loopback S3 and a WebSocket server speaking the protocol:
//   1. one idle `kiln-agent run` process (process supervisor, a small release installed at boot): RSS and
//      CPU over a window after boot settles (goal: RSS <= 60 MB, CPU <= 0.5% of a core), next to a bare
//      `node -e "setInterval(()=>{},1e6)"` measured the same way;
//   2. N agents (1,000) in one process against a WebSocket server in another process: RSS and heapUsed
//      per agent once all have said hello, minus the same process before the first agent (goal: <= 1 MB);
//   3. command frame sent → install job started, in one process (goal: median <= 10 ms).
// Usage: node scripts/bench-agent.mjs [--idle-seconds S (60)] [--settle-seconds S (30)] [--agents N (1000)]
//        [--batch N (100)] [--fleet-idle-seconds S (30)] [--commands N (100)] [--skip idle,fleet,latency]
//        [--quiet-wait S (120; the longest wait for other processes' CPU use to drop before each measure)]
//        [--json-out FILE (default bench-results/agent.json)] [--keep-temp] [--agent-node-arg ARG ...] [--own-store]
// Writes a markdown report to stdout and the figures as JSON. Everything lives in one temp dir, removed at
// the end (also on failure or Ctrl-C); every process it starts is stopped by its pid.
import { fork, spawn, spawnSync } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CLK_TCK, benchService, intOption, machineTicks, median, nextMessage, pct, printUsage, procMem, procTicks, r1, r2, r3, say } from './bench-measure.mjs';

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const AGENT_MAIN = path.join(TOP, 'packages/agent/dist/main.js');
// ws is a dependency of the agent package, not of the workspace root
const { WebSocketServer } = createRequire(path.join(TOP, 'packages/agent/package.json'))('ws');

const APP = 'benchapp';
const CHANNEL = 'stable';
const CREDENTIAL = 'agent-credential-for-the-benchmark-0123456789';
const MiB = 1024 * 1024;
const MB_IN_MiB = 1e6 / MiB;
const CHILD_ENV = { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Fraction of all CPUs busy (steal included) over `ms` while this benchmark does nothing: other people's load. */
async function othersBusy(ms = 500) {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  const used = b.busy - a.busy + (b.steal - a.steal);
  const total = used + (b.idle - a.idle);
  return total > 0 ? used / total : 0;
}

function selfMemory() {
  const m = process.memoryUsage();
  return { ...procMem(process.pid), rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers };
}

async function fullGc() {
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await sleep(50);
  }
}

function agentConfig({ instanceId, location, publicPem, url }) {
  return {
    instanceId,
    imageId: 'img-bench',
    app: APP,
    channel: CHANNEL,
    s3: location,
    keys: [publicPem],
    ...(url ? { controller: { url, credential: CREDENTIAL } } : {}),
  };
}

/** A WebSocket server that accepts agents, answers pings (ws does) and records what they send. */
async function startProtocolServer() {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 8 * MiB });
  await new Promise((resolve) => wss.once('listening', resolve));
  const stats = { connections: 0, open: 0, hellos: 0, frames: 0, pings: 0, lastReport: new Map() };
  const sockets = new Map();
  const listeners = new Set();
  wss.on('connection', (ws, req) => {
    if (req.headers.authorization !== `Bearer ${CREDENTIAL}`) return ws.close(1008, 'bad credential');
    const id = String(req.headers['x-kiln-instance']);
    stats.connections++;
    stats.open++;
    sockets.set(id, ws);
    ws.on('ping', () => stats.pings++);
    ws.on('message', (data) => {
      stats.frames++;
      let msg;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (msg.type === 'hello') stats.hellos++;
      if (msg.report) stats.lastReport.set(id, msg.report);
      for (const l of listeners) l(id, msg);
    });
    ws.on('close', () => {
      stats.open--;
      if (sockets.get(id) === ws) sockets.delete(id);
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/agents`,
    stats,
    sockets,
    onFrame: (fn) => listeners.add(fn),
    offFrame: (fn) => listeners.delete(fn),
    async close() {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
}

/** Resolves with the first frame from `id` matching `pred`, or rejects after `ms`. */
function waitFrame(server, id, pred, ms) {
  return new Promise((resolve, reject) => {
    const done = (fn, v) => {
      clearTimeout(timer);
      server.offFrame(l);
      fn(v);
    };
    const l = (from, msg) => from === id && pred(msg) && done(resolve, msg);
    const timer = setTimeout(() => done(reject, new Error(`no matching frame from ${id} within ${ms} ms`)), ms);
    server.onFrame(l);
  });
}

/** A pass-through HTTP proxy in front of the S3 endpoint that counts requests (does the idle agent poll?). */
async function startCountingProxy(target) {
  const t = new URL(target);
  const seen = [];
  const server = createServer((req, res) => {
    seen.push({ at: performance.now(), what: `${req.method} ${req.url}` });
    const up = httpRequest({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

const booted = (version) => (msg) => msg.report?.installed?.version === version && msg.report.operation === null;

// ---------------------------------------------------------------------------------------------
// Child mode: the WebSocket server of the many-agents measure (its own process, so it does not
// count in the agents' memory).
// ---------------------------------------------------------------------------------------------
async function wsServerChild() {
  const server = await startProtocolServer();
  process.on('message', (m) => {
    if (m.type === 'count') process.send({ type: 'count', hellos: server.stats.hellos, open: server.stats.open, frames: server.stats.frames, pings: server.stats.pings, rssKiB: procMem(process.pid).rssKiB });
    if (m.type === 'stop') server.close().then(() => process.exit(0));
  });
  process.send({ type: 'listening', url: server.url });
}

// ---------------------------------------------------------------------------------------------
// Child mode: N agents in one process (run with --expose-gc), each over its own pre-installed root,
// sharing one S3 client; the parent drives it over IPC.
// ---------------------------------------------------------------------------------------------
async function fleetChild() {
  const a = JSON.parse(process.argv[3]);
  const { createLogger, createReleaseStore, createS3Client } = await import('@kiln/shared');
  const { createAgent, parseAgentConfig } = await import('@kiln/agent');
  const log = createLogger({ level: 'warn', name: 'bench-fleet' });
  const store = createReleaseStore(createS3Client(a.location), a.location.bucket, '');
  await fullGc();
  await sleep(500);
  await fullGc();
  const baseline = selfMemory();
  const agents = [];
  const samples = [];
  let unfinished = 0;
  const startMs = performance.now();
  for (let from = 0; from < a.agents; from += a.batch) {
    const batch = [];
    for (let i = from; i < Math.min(a.agents, from + a.batch); i++) {
      const instanceId = `i-${String(i).padStart(5, '0')}`;
      let hello;
      const said = new Promise((resolve) => (hello = resolve));
      const config = parseAgentConfig(agentConfig({ instanceId, location: a.location, publicPem: a.publicPem, url: a.url }), `config of ${instanceId}`);
      const agent = createAgent({
        root: path.join(a.rootsDir, `r${i}`),
        config,
        log,
        ...(a.ownStore ? {} : { store }),
        service: benchService(),
        onEvent: (e) => e.type === 'sent' && e.message.type === 'hello' && hello(),
      });
      agents.push(agent);
      batch.push({ agent, said });
    }
    await Promise.all(batch.map((b) => b.agent.start()));
    const all = Promise.all(batch.flatMap((b) => [b.said, b.agent.idle()]));
    const ok = await Promise.race([all.then(() => true), sleep(120_000).then(() => false)]);
    if (!ok) unfinished += batch.length;
    await fullGc();
    samples.push({ agents: agents.length, ...selfMemory() });
    process.send({ type: 'progress', agents: agents.length });
  }
  const connectMs = performance.now() - startMs;
  process.send({ type: 'started', agents: agents.length, unfinished, connectMs, connected: agents.filter((x) => x.connected).length });
  process.on('message', async (m) => {
    if (m.type === 'sample') {
      await sleep(m.settleMs);
      await fullGc();
      process.send({ type: 'sample', baseline, final: { agents: agents.length, ...selfMemory() }, samples, connected: agents.filter((x) => x.connected).length });
    }
    if (m.type === 'stop') {
      await Promise.all(agents.map((x) => x.stop()));
      process.exit(0);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Child mode: command → job start latency. The WebSocket server and the agent share this process,
// so the send time and the job-start time come from one clock.
// ---------------------------------------------------------------------------------------------
async function latencyChild() {
  const a = JSON.parse(process.argv[3]);
  const { createLogger, frame } = await import('@kiln/shared');
  const { createAgent, parseAgentConfig } = await import('@kiln/agent');
  const log = createLogger({ level: 'warn', name: 'bench-latency' });
  const server = await startProtocolServer();
  const instanceId = 'i-latency';
  const config = parseAgentConfig(agentConfig({ instanceId, location: a.location, publicPem: a.publicPem, url: server.url }), 'latency config');
  const jobStarted = new Map();
  const agent = createAgent({
    root: a.root,
    config,
    log,
    onEvent: (e) => {
      if (e.type === 'job' && e.job === 'command') jobStarted.set(e.commandId, performance.now());
    },
  });
  const up = waitFrame(server, instanceId, booted(a.releases[0].version), 120_000);
  await agent.start();
  await up;
  await agent.idle();
  const runs = [];
  for (let i = 1; i < a.releases.length; i++) {
    const rel = a.releases[i];
    const id = `cmd-${i}`;
    await agent.idle();
    await sleep(20);
    const result = waitFrame(server, instanceId, (m) => m.type === 'result' && m.result.commandId === id, 120_000);
    const sock = server.sockets.get(instanceId);
    const text = frame({ type: 'command', id, instanceId, app: APP, action: { kind: 'install', version: rel.version, seq: rel.seq, manifestSha256: rel.manifestSha256 } });
    const t0 = performance.now();
    sock.send(text);
    const r = await result;
    const t2 = performance.now();
    const t1 = jobStarted.get(id);
    runs.push({ version: rel.version, outcome: r.result.outcome, dispatchMs: t1 === undefined ? null : r3(t1 - t0), resultMs: r1(t2 - t0) });
  }
  await agent.stop();
  await server.close();
  process.send({ type: 'done', runs });
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------
async function main() {
  const { values: opt } = parseArgs({
    options: {
      'idle-seconds': { type: 'string', default: '60' },
      'settle-seconds': { type: 'string', default: '30' },
      agents: { type: 'string', default: '1000' },
      batch: { type: 'string', default: '100' },
      'fleet-idle-seconds': { type: 'string', default: '30' },
      commands: { type: 'string', default: '100' },
      skip: { type: 'string', default: '' },
      'quiet-wait': { type: 'string', default: '120' },
      /** diagnostic: every agent of the many-agents measure makes its own S3 client, as without an injected store */
      'own-store': { type: 'boolean', default: false },
      'json-out': { type: 'string', default: 'bench-results/agent.json' },
      'keep-temp': { type: 'boolean', default: false },
      /** extra Node options for the idle `kiln-agent run` child (diagnostics, e.g. a V8 flag or a --import probe) */
      'agent-node-arg': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (opt.help) {
    printUsage(SELF);
    process.exit(0);
  }
  const int = intOption(opt);
  const IDLE_S = int('idle-seconds', 1);
  const SETTLE_S = int('settle-seconds', 0);
  const AGENTS = int('agents', 1);
  const BATCH = int('batch', 1);
  const FLEET_IDLE_S = int('fleet-idle-seconds', 0);
  const COMMANDS = int('commands', 1);
  const SKIP = new Set(opt.skip.split(',').filter(Boolean));
  const QUIET_WAIT_S = int('quiet-wait', 0);
  /** other processes using this fraction of the machine or more count as "busy" */
  const QUIET_BUSY = 0.25;

  /** Before a measure: while other processes keep the machine busy, wait a little (up to --quiet-wait seconds). */
  async function quiet(phase) {
    const t0 = performance.now();
    let busy = await othersBusy();
    while (busy >= QUIET_BUSY && performance.now() - t0 < QUIET_WAIT_S * 1000) {
      await sleep(2000);
      busy = await othersBusy();
    }
    const waited = (performance.now() - t0) / 1000;
    if (busy >= QUIET_BUSY) say(`${phase}: other processes keep ${(busy * 100).toFixed(0)}% of the machine busy; measuring anyway`);
    return { othersBusyBefore: r2(busy), waitedSeconds: r1(waited), loadavg1: r2(os.loadavg()[0]) };
  }

  const { appLayout, createLogger, createProcessSupervisor, createReleaseStore, createS3Client, generateReleaseKeyPair, parsePrivateKey, parsePublicKey, promoteRelease, publishRelease, readSupervisorStatus, supervisorPaths } = await import('@kiln/shared');

  const benchStart = performance.now();
  const loadStart = os.loadavg();
  const base = await mkdtemp(path.join(os.tmpdir(), 'kiln-bench-agent-'));
  const log = createLogger({ level: 'warn', name: 'bench' });
  /** every process this benchmark started directly, by pid */
  const children = new Set();
  /** app dirs whose process supervisor (started by an agent of ours) must be stopped */
  const supervised = new Set();
  let s3;
  let cleaned = false;

  function track(child) {
    children.add(child);
    child.once('exit', () => children.delete(child));
    return child;
  }

  async function stopChild(child, signal = 'SIGTERM', graceMs = 10_000) {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    try {
      process.kill(child.pid, signal);
    } catch {
      return;
    }
    if (await Promise.race([gone.then(() => true), sleep(graceMs).then(() => false)])) return;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {}
    await gone;
  }

  // One cleanup, whoever asks first (a signal, or the failure a signal causes); later callers wait for it.
  let cleaning;
  const cleanup = () => (cleaning ??= doCleanup());
  async function doCleanup() {
    cleaned = true;
    for (const child of [...children]) await stopChild(child);
    for (const appDir of supervised) await createProcessSupervisor({ appDir, log }).stop().catch((err) => say(`could not stop the supervisor of ${appDir}: ${err.message}`));
    if (s3) await s3.close().catch(() => undefined);
    if (opt['keep-temp']) say(`kept ${base}`);
    else await rm(base, { recursive: true, force: true, maxRetries: 3 }).catch((err) => say(`could not remove ${base}: ${err.message}`));
  }
  // `on`, not `once`: a library's signal hook re-raises the signal (killing the process before the
  // cleanup ran) when it finds no other listener left.
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      if (cleaned) return;
      say(`${sig}: cleaning up`);
      cleanup().finally(() => process.exit(130));
    });
  }

  /** A fork of this script in a child mode, with an IPC channel. */
  function forkSelf(mode, arg, execArgv = []) {
    const logFile = path.join(base, `${mode.replace(/^--/, '')}.log`);
    const out = openSync(logFile, 'a');
    const child = track(fork(SELF, [mode, JSON.stringify(arg)], { execArgv, env: CHILD_ENV, stdio: ['ignore', out, out, 'ipc'] }));
    closeSync(out);
    child.logFile = logFile;
    return child;
  }

  /** A small release: kiln.json, a VERSION file and 20 source-like files (~80 KiB). */
  async function writeApp(dir, version) {
    await mkdir(path.join(dir, 'lib'), { recursive: true });
    await writeFile(path.join(dir, 'kiln.json'), JSON.stringify({ service: { command: ['node', '-e', 'setInterval(()=>{},1<<30)'], stopTimeoutMs: 2000 }, health: { type: 'none' } }));
    await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
    for (let i = 0; i < 20; i++) await writeFile(path.join(dir, 'lib', `m${i}.js`), `// module ${i} of ${version}\n` + `export const f${i} = (x) => x * ${i} + 1;\n`.repeat(100));
  }

  const results = {};
  try {
    const { startEmbeddedS3 } = await import('@kiln/controller');
    s3 = await startEmbeddedS3({ directory: path.join(base, 's3'), bucket: 'kiln' });
    const location = s3.location;
    say(`temp dir ${base}; S3 at ${location.endpoint}`);
    const pair = generateReleaseKeyPair();
    const key = parsePrivateKey(pair.privatePem, 'bench key');
    const keys = [parsePublicKey(pair.publicPem, 'bench key')];
    const store = createReleaseStore(createS3Client(location), 'kiln', '');

    // --- releases: 1.0.0 on the channel, then one new version per latency command ---
    const releases = [];
    const publishOne = async (version) => {
      const src = path.join(base, `src-${version}`);
      await writeApp(src, version);
      const pub = await publishRelease({ store, app: APP, version, source: src, key, log });
      await rm(src, { recursive: true, force: true });
      releases.push({ version, seq: pub.manifest.seq, manifestSha256: pub.manifestSha256, artifactBytes: pub.manifest.artifact.size, files: pub.manifest.files.length });
    };
    let t = performance.now();
    await publishOne('1.0.0');
    await promoteRelease({ store, app: APP, version: '1.0.0', channel: CHANNEL, key, keys, ttlMs: 7 * 86_400_000 });
    if (!SKIP.has('latency')) for (let i = 1; i <= COMMANDS; i++) await publishOne(`1.0.${i}`);
    say(`published ${releases.length} release(s) of ${releases[0].files} entries, artifact ${releases[0].artifactBytes} bytes, in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    results.release = { app: APP, entries: releases[0].files, artifactBytes: releases[0].artifactBytes, service: 'node -e "setInterval(()=>{},1<<30)"', health: 'none' };

    // --- 1. one idle agent process ---
    if (!SKIP.has('idle')) {
      const load = await quiet('idle');
      const server = await startProtocolServer();
      const proxy = await startCountingProxy(location.endpoint);
      const root = path.join(base, 'idle-root');
      await mkdir(path.join(root, 'etc/kiln'), { recursive: true });
      await writeFile(path.join(root, 'etc/kiln/agent.json'), JSON.stringify(agentConfig({ instanceId: 'i-idle', location: { ...location, endpoint: proxy.endpoint }, publicPem: pair.publicPem, url: server.url }), null, 2));
      supervised.add(appLayout(root, APP).appDir);
      const agentLog = path.join(base, 'idle-agent.log');
      const out = openSync(agentLog, 'a');
      const up = waitFrame(server, 'i-idle', booted('1.0.0'), 120_000);
      const t0 = performance.now();
      const agent = track(spawn(process.execPath, [...opt['agent-node-arg'], AGENT_MAIN, 'run', '--root', root], { env: CHILD_ENV, stdio: ['ignore', out, out] }));
      const bare = track(spawn(process.execPath, ['-e', 'setInterval(()=>{},1e6)'], { stdio: 'ignore' }));
      closeSync(out);
      await up.catch((err) => {
        throw new Error(`${err.message}; the agent's log:\n${readFileSync(agentLog, 'utf8').slice(-3000)}`);
      });
      const bootMs = performance.now() - t0;
      say(`idle agent: booted and installed 1.0.0 in ${(bootMs / 1000).toFixed(1)} s; settling ${SETTLE_S} s, then sampling ${IDLE_S} s`);
      await sleep(SETTLE_S * 1000);
      const st = server.stats;
      const before = { s3: proxy.seen.length, frames: st.frames, pings: st.pings, agent: procTicks(agent.pid), bare: procTicks(bare.pid), machine: machineTicks() };
      const samples = { agent: [], bare: [] };
      const w0 = performance.now();
      while (performance.now() - w0 < IDLE_S * 1000) {
        samples.agent.push(procMem(agent.pid));
        samples.bare.push(procMem(bare.pid));
        await sleep(1000);
      }
      const windowS = (performance.now() - w0) / 1000;
      const after = { s3: proxy.seen.length, frames: st.frames, pings: st.pings, agent: procTicks(agent.pid), bare: procTicks(bare.pid), machine: machineTicks() };
      const cpuPct = (k) => (100 * (after[k] - before[k])) / CLK_TCK / windowS;
      const memStats = (xs) => ({ medianMiB: r1(median(xs.map((m) => m.rssKiB)) / 1024), maxMiB: r1(Math.max(...xs.map((m) => m.rssKiB)) / 1024), anonMiB: r1(median(xs.map((m) => m.anonKiB)) / 1024), fileMiB: r1(median(xs.map((m) => m.fileKiB)) / 1024) });
      // the app and its supervisor, for context only: they are separate processes, not counted
      const sup = await readSupervisorStatus(supervisorPaths(appLayout(root, APP).appDir).status);
      const others = {};
      for (const [k, pid] of [['supervisor', sup?.daemonPid], ['app', sup?.childPid]]) {
        try {
          others[k] = r1(procMem(pid).rssKiB / 1024);
        } catch {
          others[k] = null;
        }
      }
      const machineBusyCores = (after.machine.busy - before.machine.busy) / CLK_TCK / windowS;
      results.idle = {
        windowSeconds: r1(windowS),
        settleSeconds: SETTLE_S,
        bootSeconds: r1(bootMs / 1000),
        heartbeatMs: 15_000,
        agent: { ...memStats(samples.agent), cpuPercentOfCore: r3(cpuPct('agent')), cpuTicks: after.agent - before.agent },
        bare: { ...memStats(samples.bare), cpuPercentOfCore: r3(cpuPct('bare')), cpuTicks: after.bare - before.bare },
        ratioRss: r2(median(samples.agent.map((m) => m.rssKiB)) / median(samples.bare.map((m) => m.rssKiB))),
        framesDuringWindow: after.frames - before.frames,
        pingsDuringWindow: after.pings - before.pings,
        s3RequestsDuringWindow: after.s3 - before.s3,
        s3RequestsAtBoot: before.s3,
        notCountedRssMiB: others,
        machineBusyCoresDuringWindow: r2(machineBusyCores),
        stealCoresDuringWindow: r2((after.machine.steal - before.machine.steal) / CLK_TCK / windowS),
        clockTicksPerSecond: CLK_TCK,
        load,
      };
      say(`idle agent: RSS ${results.idle.agent.medianMiB} MiB (max ${results.idle.agent.maxMiB}), CPU ${results.idle.agent.cpuPercentOfCore}% of a core; bare node RSS ${results.idle.bare.medianMiB} MiB, CPU ${results.idle.bare.cpuPercentOfCore}%; ${results.idle.pingsDuringWindow} pings, ${results.idle.framesDuringWindow} frames and ${results.idle.s3RequestsDuringWindow} S3 requests in the window`);
      await stopChild(agent);
      await stopChild(bare);
      await server.close();
      await proxy.close();
      const appDir = appLayout(root, APP).appDir;
      await createProcessSupervisor({ appDir, log }).stop();
      supervised.delete(appDir);
    }

    // --- 2. many agents in one process ---
    if (!SKIP.has('fleet')) {
      // One root installed by a real agent boot, copied for every agent: their boots find the pointer accepted.
      const template = path.join(base, 'template-root');
      {
        const { createAgent, parseAgentConfig } = await import('@kiln/agent');
        const config = parseAgentConfig(agentConfig({ instanceId: 'i-template', location, publicPem: pair.publicPem }), 'template config');
        const agent = createAgent({ root: template, config, log, store, keys, service: benchService() });
        await agent.start();
        await agent.idle();
        await agent.stop();
        const r = await agent.report();
        if (r.installed?.version !== '1.0.0') throw new Error(`the template root has ${JSON.stringify(r.installed)} installed, not 1.0.0`);
      }
      const rootsDir = path.join(base, 'fleet');
      await mkdir(rootsDir);
      t = performance.now();
      for (let i = 0; i < AGENTS; i += 50) {
        await Promise.all(Array.from({ length: Math.min(50, AGENTS - i) }, (_, k) => cp(template, path.join(rootsDir, `r${i + k}`), { recursive: true, verbatimSymlinks: true })));
      }
      say(`fleet: ${AGENTS} roots copied in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      const load = await quiet('fleet');
      const server = forkSelf('--ws-server', {});
      const { url } = await nextMessage(server, 'listening', 30_000);
      const count = async () => {
        const reply = nextMessage(server, 'count', 30_000);
        server.send({ type: 'count' });
        return reply;
      };
      const fleet = forkSelf('--fleet', { agents: AGENTS, batch: BATCH, ownStore: opt['own-store'], rootsDir, location, publicPem: pair.publicPem, url }, ['--expose-gc']);
      fleet.on('message', (m) => m.type === 'progress' && m.agents % 500 === 0 && say(`fleet: ${m.agents} agents up`));
      const started = await nextMessage(fleet, 'started');
      const deadline = Date.now() + 60_000;
      let seen = await count();
      while (seen.hellos < AGENTS && Date.now() < deadline) {
        await sleep(500);
        seen = await count();
      }
      say(`fleet: ${started.agents} agents started in ${(started.connectMs / 1000).toFixed(1)} s; the server has ${seen.hellos} hellos over ${seen.open} open sockets`);
      const sampled = nextMessage(fleet, 'sample');
      fleet.send({ type: 'sample', settleMs: 5_000 });
      const sample = await sampled;
      // idle CPU of the whole process with every agent connected (heartbeats only)
      let fleetCpu = null;
      if (FLEET_IDLE_S > 0) {
        const c0 = procTicks(fleet.pid);
        const before = await count();
        await sleep(FLEET_IDLE_S * 1000);
        const after = await count();
        fleetCpu = { seconds: FLEET_IDLE_S, percentOfCore: r2((100 * (procTicks(fleet.pid) - c0)) / CLK_TCK / FLEET_IDLE_S), pings: after.pings - before.pings, frames: after.frames - before.frames };
      }
      const end = await count();
      const b = sample.baseline;
      const f = sample.final;
      const per = (k) => r3((f[k] - b[k]) / AGENTS / 1024);
      // the slope over the batches: memory per agent without leaning on the single baseline sample
      const xs = sample.samples.map((s) => s.agents);
      const slope = (k) => {
        const ys = sample.samples.map((s) => s[k]);
        const mx = xs.reduce((n, x) => n + x, 0) / xs.length;
        const my = ys.reduce((n, y) => n + y, 0) / ys.length;
        const num = xs.reduce((n, x, i) => n + (x - mx) * (ys[i] - my), 0);
        const den = xs.reduce((n, x) => n + (x - mx) ** 2, 0);
        return den ? r1(num / den / 1024) : null;
      };
      results.fleet = {
        agents: AGENTS,
        batch: BATCH,
        service: "in-memory ServiceManager (kind 'bench'); roots pre-installed (copies of one root a real agent boot installed), so boot resolves the channel and finds the pointer accepted",
        sharedStore: !opt['own-store'],
        startSeconds: r1(started.connectMs / 1000),
        unfinishedAgents: started.unfinished,
        connectedAtSample: sample.connected,
        serverHellos: seen.hellos,
        serverOpenSockets: end.open,
        serverRssMiB: r1(end.rssKiB / 1024),
        baselineMiB: { rss: r1(b.rss / MiB), heapUsed: r1(b.heapUsed / MiB), heapTotal: r1(b.heapTotal / MiB), external: r1(b.external / MiB) },
        finalMiB: { rss: r1(f.rss / MiB), heapUsed: r1(f.heapUsed / MiB), heapTotal: r1(f.heapTotal / MiB), external: r1(f.external / MiB), anon: r1(f.anonKiB / 1024), file: r1(f.fileKiB / 1024) },
        perAgentKiB: { rss: r1((f.rss - b.rss) / AGENTS / 1024), heapUsed: r1((f.heapUsed - b.heapUsed) / AGENTS / 1024), external: r1((f.external - b.external) / AGENTS / 1024), anon: r1((f.anonKiB - b.anonKiB) / AGENTS) },
        perAgentMiB: { rss: per('rss'), heapUsed: per('heapUsed') },
        slopeKiBPerAgent: { rss: slope('rss'), heapUsed: slope('heapUsed') },
        batches: sample.samples.map((s) => ({ agents: s.agents, rssMiB: r1(s.rss / MiB), heapUsedMiB: r1(s.heapUsed / MiB) })),
        idleCpu: fleetCpu,
        load,
      };
      say(`fleet: per agent RSS ${results.fleet.perAgentKiB.rss} KiB, heapUsed ${results.fleet.perAgentKiB.heapUsed} KiB`);
      const exited = new Promise((resolve) => fleet.once('exit', resolve));
      fleet.send({ type: 'stop' });
      await Promise.race([exited, sleep(60_000)]);
      await stopChild(fleet);
      server.send({ type: 'stop' });
      await Promise.race([new Promise((resolve) => server.once('exit', resolve)), sleep(10_000)]);
      await stopChild(server);
      await rm(rootsDir, { recursive: true, force: true });
    }

    // --- 3. command → install started ---
    if (!SKIP.has('latency')) {
      const root = path.join(base, 'latency-root');
      const appDir = appLayout(root, APP).appDir;
      supervised.add(appDir);
      const load = await quiet('latency');
      say(`latency: ${COMMANDS} sequential install commands, each a new release`);
      const child = forkSelf('--latency', { root, location, publicPem: pair.publicPem, releases });
      const { runs } = await nextMessage(child, 'done');
      await Promise.race([new Promise((resolve) => child.once('exit', resolve)), sleep(10_000)]);
      await createProcessSupervisor({ appDir, log }).stop();
      supervised.delete(appDir);
      const d = runs.map((r) => r.dispatchMs).filter((x) => x !== null);
      const outcomes = {};
      for (const r of runs) outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
      results.latency = {
        commands: runs.length,
        what: 'install commands, each for a new release (a real install: download, verify, extract, swap, supervisor restart); one at a time, the next sent once the agent is idle',
        outcomes,
        dispatchMs: { median: r3(median(d)), p95: r3(pct(d, 95)), p99: r3(pct(d, 99)), min: r3(Math.min(...d)), max: r3(Math.max(...d)), n: d.length },
        commandToResultMs: { median: r1(median(runs.map((r) => r.resultMs))), p95: r1(pct(runs.map((r) => r.resultMs), 95)) },
        load,
        runs,
      };
      say(`latency: median ${results.latency.dispatchMs.median} ms, p95 ${results.latency.dispatchMs.p95}, p99 ${results.latency.dispatchMs.p99}; outcomes ${JSON.stringify(outcomes)}`);
    }
  } catch (err) {
    say(`FAILED: ${err.stack ?? err}`);
    await cleanup();
    process.exit(1);
  }
  await cleanup();

  // ---------------------------------------------------------------------------------------------
  // Report
  // ---------------------------------------------------------------------------------------------
  const git = (() => {
    const run = (...args) => spawnSync('git', args, { cwd: TOP, encoding: 'utf8' });
    const head = run('rev-parse', '--short', 'HEAD');
    const dirty = run('status', '--porcelain', '--', 'packages/agent', 'packages/shared');
    return head.status === 0 ? { commit: head.stdout.trim(), uncommittedInPackages: dirty.stdout.split('\n').filter(Boolean).map((l) => l.slice(3)) } : null;
  })();
  const cpuModel = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const NPROC = os.availableParallelism?.() ?? os.cpus().length;
  const machine = { nproc: NPROC, cpu: cpuModel, memGiB: r1(os.totalmem() / 1024 ** 3), node: process.version, kernel: os.release(), loadavgStart: loadStart.map(r2), loadavgEnd: os.loadavg().map(r2) };
  const goals = {};
  if (results.idle) {
    goals.idleRss = { goal: '<= 60 MB (57.2 MiB), the agent process alone', valueMiB: results.idle.agent.maxMiB, pass: results.idle.agent.maxMiB <= 60 * MB_IN_MiB };
    goals.idleCpu = { goal: '<= 0.5% of a core', value: results.idle.agent.cpuPercentOfCore, pass: results.idle.agent.cpuPercentOfCore <= 0.5 };
  }
  if (results.fleet) goals.perAgent = { goal: '<= 1 MB (976.6 KiB) per agent, RSS and heapUsed', valueKiB: results.fleet.perAgentKiB, pass: results.fleet.perAgentKiB.rss <= 1e6 / 1024 && results.fleet.perAgentKiB.heapUsed <= 1e6 / 1024 };
  if (results.latency) goals.latency = { goal: 'median <= 10 ms', value: results.latency.dispatchMs.median, pass: results.latency.dispatchMs.median <= 10 };
  const totalS = (performance.now() - benchStart) / 1000;
  const output = { bench: 'agent', date: new Date().toISOString(), command: `node scripts/bench-agent.mjs ${process.argv.slice(2).join(' ')}`.trim(), machine, git, ...results, goals, totalSeconds: r1(totalS) };
  const jsonOut = path.resolve(TOP, opt['json-out']);
  await mkdir(path.dirname(jsonOut), { recursive: true });
  await writeFile(jsonOut, JSON.stringify(output, null, 2) + '\n');

  const ok = (b) => (b ? 'met' : '**MISSED**');
  const lines = [];
  lines.push(`## bench:agent — ${output.date}`);
  lines.push('');
  lines.push(`Machine: ${NPROC} cores (${cpuModel}), ${machine.memGiB} GiB RAM, Node ${process.version}. Load average at start ${machine.loadavgStart.join(' / ')}, at end ${machine.loadavgEnd.join(' / ')}.`);
  const loads = [['idle', results.idle], ['fleet', results.fleet], ['latency', results.latency]].filter(([, r]) => r).map(([k, r]) => [k, r.load]);
  if (loads.length) {
    const busy = loads.some(([, l]) => l.othersBusyBefore >= QUIET_BUSY);
    lines.push(`Other processes' CPU just before each measure (share of the machine): ${loads.map(([k, l]) => `${k} ${(l.othersBusyBefore * 100).toFixed(0)}%${l.waitedSeconds >= 1 ? ` (after waiting ${l.waitedSeconds.toFixed(0)} s)` : ''}`).join(', ')}${busy ? ' — **the machine was busy: CPU, start-up and latency figures may be inflated**' : ''}.`);
  }
  if (git) lines.push(`Code: commit ${git.commit}${git.uncommittedInPackages.length ? ` plus uncommitted changes in ${git.uncommittedInPackages.join(', ')}` : ''}.`);
  lines.push(`Release: ${results.release.entries} manifest entries, artifact ${results.release.artifactBytes} bytes, service \`${results.release.service}\`, no health check.`);
  lines.push('');
  lines.push('| measure | figure | baseline / context | goal |');
  lines.push('|---|---|---|---|');
  if (results.idle) {
    const I = results.idle;
    lines.push(`| idle \`kiln-agent run\`, RSS (MiB, median / max over ${I.windowSeconds} s) | ${I.agent.medianMiB} / ${I.agent.maxMiB} | bare node ${I.bare.medianMiB} / ${I.bare.maxMiB} (ratio ${I.ratioRss}) | ≤ 60 MB: ${ok(goals.idleRss.pass)} |`);
    lines.push(`| idle agent, RSS anonymous / file-backed (MiB) | ${I.agent.anonMiB} / ${I.agent.fileMiB} | bare node ${I.bare.anonMiB} / ${I.bare.fileMiB} | |`);
    lines.push(`| idle agent, CPU (% of a core, utime+stime) | ${I.agent.cpuPercentOfCore} (${I.agent.cpuTicks} ticks) | bare node ${I.bare.cpuPercentOfCore} (${I.bare.cpuTicks} ticks) | ≤ 0.5%: ${ok(goals.idleCpu.pass)} |`);
    lines.push(`| idle agent, traffic in the window | ${I.pingsDuringWindow} pings, ${I.framesDuringWindow} frames, ${I.s3RequestsDuringWindow} S3 requests | heartbeat ${I.heartbeatMs / 1000} s; ${I.s3RequestsAtBoot} S3 requests at boot | |`);
  }
  if (results.fleet) {
    const F = results.fleet;
    lines.push(`| ${F.agents} agents in one process, RSS per agent (KiB) | ${F.perAgentKiB.rss} | process ${F.baselineMiB.rss} → ${F.finalMiB.rss} MiB; slope over batches ${F.slopeKiBPerAgent.rss ?? "n/a"} | ≤ 1 MB: ${ok(F.perAgentKiB.rss <= 1e6 / 1024)} |`);
    lines.push(`| ${F.agents} agents, heapUsed per agent (KiB) | ${F.perAgentKiB.heapUsed} | heap ${F.baselineMiB.heapUsed} → ${F.finalMiB.heapUsed} MiB; slope ${F.slopeKiBPerAgent.heapUsed ?? "n/a"} | ≤ 1 MB: ${ok(F.perAgentKiB.heapUsed <= 1e6 / 1024)} |`);
    lines.push(`| ${F.agents} agents, start (s) / hellos at the server / connected | ${F.startSeconds} / ${F.serverHellos} / ${F.connectedAtSample} | ${F.unfinishedAgents} unfinished | |`);
    if (F.idleCpu) lines.push(`| ${F.agents} agents, idle CPU of the process (% of a core) | ${F.idleCpu.percentOfCore} | ${F.idleCpu.pings} pings in ${F.idleCpu.seconds} s | |`);
  }
  if (results.latency) {
    const L = results.latency.dispatchMs;
    lines.push(`| command sent → install job started (ms), ${L.n} commands | median ${L.median}, p95 ${L.p95}, p99 ${L.p99} | min ${L.min}, max ${L.max} | median ≤ 10 ms: ${ok(goals.latency.pass)} |`);
    lines.push(`| command sent → result (ms, the whole install, context) | median ${results.latency.commandToResultMs.median}, p95 ${results.latency.commandToResultMs.p95} | outcomes ${Object.entries(results.latency.outcomes).map(([k, v]) => `${k} ${v}`).join(', ')} | |`);
  }
  lines.push('');
  if (results.idle) lines.push(`The idle figures are the agent process alone: the process supervisor (${results.idle.notCountedRssMiB.supervisor} MiB) and the app (${results.idle.notCountedRssMiB.app} MiB) are separate processes and not counted. Other CPU on the machine during the idle window: ${results.idle.machineBusyCoresDuringWindow} cores busy, ${results.idle.stealCoresDuringWindow} stolen.`);
  lines.push(`Total bench time ${totalS.toFixed(0)} s. JSON: ${path.relative(TOP, jsonOut)}.`);
  console.log(lines.join('\n'));
}

const MODE = process.argv[2];
if (MODE === '--ws-server') await wsServerChild();
else if (MODE === '--fleet') await fleetChild();
else if (MODE === '--latency') await latencyChild();
else await main();
