#!/usr/bin/env node
// bench:traffic — requests that fail while a fleet behind HAProxy is deployed (docs/balancers.md). Per run, in
// a fresh temp home, it drives the real CLI as a user would: `kiln keys generate`, `kiln up` (with HAProxy), releases
// v1–v5 pushed from the demo app, a fleet of 3 on the process provider baked from v1; then, in order: hotfix v2
// (--batch 1), relaunch v3, bake v4, heal (after a hotfix to v5 --batch 100% outside the measured window, to make
// drift) and rollback (the standby group back). For each, autocannon sends GETs to the fleet's endpoint (`kiln fleet
// show web --json`): a warm-up, a steady window, then the whole `kiln deploy …` (its wall time, spawn to exit, is the
// strategy's time), and after it as long as it takes for --min-requests requests started from the deploy's spawn on.
// Failed = non-2xx answers + errors (connection errors and timeouts). Latency p50/p99 of the requests started in the
// steady window vs those started during the deploy. Goals (the issue): 0 failed of >= 50,000 per strategy, p99 during
// the deploy <= 2x the steady p99, a hotfix with drain of 3 at --batch 1 <= 3 s.
// Usage: node --openssl-legacy-provider scripts/bench-traffic.mjs [--runs N (3)] [--connections N (10)]
//        [--steady S (5)] [--warmup S (1)] [--min-requests N (50000)] [--quiet-wait S (10: the longest wait, before
//        each strategy, for the machine to use < 0.5 core)] [--json-out FILE (default bench-results/traffic.json)]
//        [--keep-temp] [--help]   (env KILN_BENCH_COMMIT: the commit measured, in a tree without .git)
// Writes a markdown report to stdout and the figures as JSON to the file. At the end of each run, on failure and
// on Ctrl-C: `kiln down --wipe` (kiln up, the instances, HAProxy) and the temp dir removed (kept with --keep-temp).
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';
import { CLK_TCK, cleanupOnce, intOption, machineTicks, median, waitQuiet, pct, printUsage, r1, r2, say } from './bench-measure.mjs';

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const MAIN = path.join(TOP, 'packages/controller/dist/main.js');
const DEMO_APP = path.join(TOP, 'packages/controller/demo-app');
const APP = 'benchapp';
const FLEET = 'web';
const SIZE = 3;
const VERSIONS = ['v1', 'v2', 'v3', 'v4', 'v5'];
const TIMEOUT_S = 10;
const GOALS = { failed: 0, p99Ratio: 2, hotfixMs: 3_000 };
// The load goes on after a deploy until --min-requests; a rate so low that this takes longer is reported, not waited for.
const MAX_TAIL_MS = 300_000;
const STRATEGIES = [
  { key: 'hotfix', what: 'hotfix v2 in place, --batch 1', args: ['deploy', FLEET, 'v2', '--batch', '1'] },
  { key: 'relaunch', what: 'relaunch v3 (new group from the current image)', args: ['deploy', FLEET, 'v3', '--strategy', 'relaunch'] },
  { key: 'bake', what: 'bake v4 + launch 3 + swap', args: ['deploy', FLEET, 'v4', '--strategy', 'bake'] },
  {
    key: 'heal',
    what: 'heal (after a hotfix to v5, not measured): replace the 3 drifted instances',
    before: ['deploy', FLEET, 'v5', '--batch', '100%'],
    args: ['heal', FLEET],
  },
  { key: 'rollback', what: 'rollback (the standby group back)', args: ['rollback', FLEET] },
];

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '3' },
    connections: { type: 'string', default: '10' },
    steady: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    'min-requests': { type: 'string', default: '50000' },
    'quiet-wait': { type: 'string', default: '10' },
    'json-out': { type: 'string', default: 'bench-results/traffic.json' },
    'keep-temp': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (opt.help) {
  printUsage(SELF);
  process.exit(0);
}
if (positionals.length) {
  console.error(`unexpected argument ${positionals[0]}`);
  process.exit(2);
}
const int = intOption(opt);
const RUNS = int('runs', 1);
const CONNECTIONS = int('connections', 1);
const STEADY_MS = int('steady', 1) * 1000;
const WARMUP_MS = int('warmup', 0) * 1000;
const MIN_REQUESTS = int('min-requests', 1);
const QUIET_WAIT_S = int('quiet-wait', 0);

// The CLI's children get the environment minus what would point them at another controller or home.
const CHILD_ENV = { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', NO_COLOR: '1' };
for (const k of ['KILN_CONTROLLER', 'KILN_TOKEN', 'KILN_HOME', 'KILN_RELEASE_KEY']) delete CHILD_ENV[k];

/**
 * `kiln ARGS --home HOME` as a child process, the way a user runs it: its exit code, stdout, stderr and wall time
 * (spawn to exit). stderr (with --json: the deployment's story) is also appended to `logFile`.
 */
function kiln(home, args, { logFile, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['--openssl-legacy-provider', MAIN, ...args, '--home', home], { cwd: cwd ?? TOP, env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', reject);
    child.on('close', async (code) => {
      const ms = performance.now() - t0;
      if (logFile) await writeFile(logFile, `$ kiln ${args.join(' ')}\n${stderr}${stdout.length < 4000 ? stdout : ''}\n(exit ${code}, ${Math.round(ms)} ms)\n\n`, { flag: 'a' });
      resolve({ code, stdout, stderr, ms });
    });
  });
}

/** `kiln …` that must succeed: its stdout (parsed with `json`). */
async function kilnOk(home, args, opts = {}) {
  const r = await kiln(home, args, opts);
  if (r.code !== 0) throw new Error(`kiln ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-2000)}`);
  return opts.json ? JSON.parse(r.stdout) : r;
}

/** `kiln up --home HOME` in the background, as `kiln up &` would run: resolves once it prints its controller's URL. */
function kilnUp(home, logFile) {
  return new Promise((resolve, reject) => {
    const log = createWriteStream(logFile);
    const child = spawn(process.execPath, ['--openssl-legacy-provider', MAIN, 'up', '--home', home], { cwd: TOP, env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    const timer = setTimeout(() => reject(new Error(`kiln up printed no controller URL within 60 s; its output:\n${text.slice(-3000)}`)), 60_000);
    const onData = (b) => {
      text += b;
      log.write(b);
      const url = /^kiln controller\s+(\S+)/m.exec(text)?.[1];
      const balancer = /^balancer\s+(.*)$/m.exec(text)?.[1];
      if (url && /^pid\s/m.test(text)) {
        clearTimeout(timer);
        resolve({ child, url, balancer });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      child.exited = true;
      log.end();
      reject(new Error(`kiln up exited (${code ?? signal}) before it was ready; its output:\n${text.slice(-3000)}`));
    });
  });
}

/**
 * autocannon's client writes its next request on the connection it just read a response from. HAProxy answers
 * every request with `Connection: close` (`option httpclose`), so that request goes to a closing socket and the
 * client's queue of requests in flight falls out of step with the responses (measured: p50 1.2 s instead of 8 ms,
 * twice as many requests "sent" as answered). A client must not reuse a connection the server closes: after each
 * response this one opens a new connection for its next request, as curl or a browser would. A connection error
 * also empties the queue (autocannon reconnects without doing so).
 */
function reconnectAfterEachResponse(client) {
  const doRequest = client._doRequest;
  client.on('response', () => {
    client.kilnReconnect = true;
  });
  client.on('connError', () => client.pipelinedRequests.clear());
  client._doRequest = function (...args) {
    if (this.kilnReconnect) {
      this.kilnReconnect = false;
      return this._resetConnection();
    }
    return doRequest.apply(this, args);
  };
}

const WINDOWS = ['warmup', 'steady', 'deploy', 'tail'];

/**
 * Load on `url` from now until `stop()`: every request is put in the window in which it was *sent* (a timeout's
 * send time is its error's time minus the timeout), windows being marked by `mark(name)`.
 */
function startLoad(url) {
  const t0 = performance.now();
  const marks = { warmup: t0 };
  const win = Object.fromEntries(WINDOWS.map((w) => [w, { ok: 0, failed: 0, latencies: [], failures: {} }]));
  // per second from the deploy's spawn (negative: before it), by send time: answers, failures, latencies
  const perSecond = new Map();
  const windowAt = (t) => {
    let at = 'warmup';
    for (const w of WINDOWS) if (marks[w] !== undefined && t >= marks[w]) at = w;
    return at;
  };
  // Until the deploy is spawned its second is not known: the steady window's seconds count back from its end.
  const second = (t) => Math.floor((t - (marks.deploy ?? marks.steady + STEADY_MS)) / 1000);
  const bump = (t, latency) => {
    if (marks.steady === undefined || t < marks.steady) return;
    const s = second(t);
    const row = perSecond.get(s) ?? { ok: 0, failed: 0, latencies: [] };
    if (latency === undefined) row.failed++;
    else {
      row.ok++;
      row.latencies.push(latency);
    }
    perSecond.set(s, row);
  };
  const failures = [];
  const fail = (t, what) => {
    const w = win[windowAt(t)];
    w.failed++;
    w.failures[what] = (w.failures[what] ?? 0) + 1;
    bump(t);
    if (failures.length < 200) failures.push({ window: windowAt(t), what, msFromDeploy: marks.deploy === undefined ? null : Math.round(t - marks.deploy) });
  };
  let result;
  const done = new Promise((resolve, reject) => {
    result = autocannon(
      { url, connections: CONNECTIONS, pipelining: 1, timeout: TIMEOUT_S, duration: 24 * 3600, setupClient: reconnectAfterEachResponse },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  });
  const instance = result;
  instance.on('response', (_client, status, _bytes, ms) => {
    const sent = performance.now() - ms;
    if (status >= 200 && status < 300) {
      const w = win[windowAt(sent)];
      w.ok++;
      w.latencies.push(ms);
      bump(sent, ms);
    } else fail(sent, `HTTP ${status}`);
  });
  instance.on('reqError', (err) => {
    const timedOut = err.message === 'request timed out';
    fail(performance.now() - (timedOut ? TIMEOUT_S * 1000 : 0), timedOut ? 'timeout' : (err.code ?? err.message));
  });
  return {
    win,
    marks,
    perSecond,
    failures,
    mark: (name) => (marks[name] = performance.now()),
    /** requests answered or failed, sent from the deploy's spawn on */
    sinceDeploy: () => win.deploy.ok + win.deploy.failed + win.tail.ok + win.tail.failed,
    async stop() {
      marks.end = performance.now();
      instance.stop();
      return done;
    },
  };
}

const ms2 = (x) => (x == null ? null : r2(x));
function windowFigures(w, ms) {
  const n = w.ok + w.failed;
  const lat = w.latencies;
  return {
    requests: n,
    ok: w.ok,
    failed: w.failed,
    failures: w.failures,
    ms: Math.round(ms),
    perSecond: ms > 0 ? Math.round(n / (ms / 1000)) : null,
    p50Ms: lat.length ? ms2(pct(lat, 50)) : null,
    p99Ms: lat.length ? ms2(pct(lat, 99)) : null,
    maxMs: lat.length ? ms2(Math.max(...lat)) : null,
  };
}

/** What the endpoint serves now: the release named in the demo app's answer to 6 GETs (2 rounds of the 3). */
async function servedVersions(url) {
  const seen = {};
  for (let n = 0; n < 6; n++) {
    const text = await fetch(url, { signal: AbortSignal.timeout(5_000) })
      .then((r) => r.text())
      .catch((err) => `error ${err.message}`);
    const v = /kiln-demo (\S+)/.exec(text)?.[1] ?? text.trim().slice(0, 60);
    seen[v] = (seen[v] ?? 0) + 1;
  }
  return seen;
}

/**
 * What the deployment was doing `ms` after the CLI's spawn, from its record: before the record, a top-level phase
 * (bake, launch, health, live, retire, …; the bake's own sub-phases are inside `bake`), or for a hotfix the batch in
 * flight (each ends when its instance is healthy); `after the record` past its end (the CLI's last poll and exit).
 */
function phaseAt(out, ms) {
  const d = out.deployment;
  if (!d || out.recordCreatedMsAfterSpawn == null) return '-';
  let t = ms - out.recordCreatedMsAfterSpawn;
  if (t < 0) return 'before the record (the CLI starting)';
  const phases = (d.phases ?? []).filter((p) => !p.name.includes(':'));
  if (phases.length) {
    for (const p of phases) {
      if (t < p.ms) return p.name;
      t -= p.ms;
    }
    return 'after the record';
  }
  const ends = (d.batches ?? []).map((ids) => Math.max(...ids.map((id) => d.instances[id]?.atMs ?? Infinity)));
  const b = ends.findIndex((end) => t < end);
  return b >= 0 ? `batch ${b + 1}` : 'after the record';
}

/** One strategy under load: warm-up, steady window, the deploy, the tail up to --min-requests. */
async function measure(s, { home, endpoint, logFile }) {
  if (s.before) {
    const b = await kiln(home, [...s.before, '--json'], { logFile });
    const rec = JSON.parse(b.stdout || 'null');
    say(`  (not measured) kiln ${s.before.join(' ')}: ${rec?.state ?? `exit ${b.code}`} in ${r2(b.ms / 1000)} s`);
    if (b.code !== 0 || rec?.state !== 'succeeded') throw new Error(`kiln ${s.before.join(' ')} (before ${s.key}) did not succeed: ${rec?.verdict ?? b.stderr.slice(-1500)}`);
  }
  const busyBefore = await waitQuiet(QUIET_WAIT_S);
  const load = startLoad(endpoint);
  await sleep(WARMUP_MS);
  load.mark('steady');
  const m0 = machineTicks();
  await sleep(STEADY_MS);
  const m1 = machineTicks();
  load.mark('deploy');
  const spawnedAt = Date.now();
  const dep = await kiln(home, [...s.args, '--json'], { logFile });
  load.mark('tail');
  const m2 = machineTicks();
  const deployMs = load.marks.tail - load.marks.deploy;
  const tailStart = performance.now();
  while (load.sinceDeploy() < MIN_REQUESTS && performance.now() - tailStart < MAX_TAIL_MS) await sleep(50);
  const total = await load.stop();
  const m = load.marks;
  let rec = null;
  try {
    rec = JSON.parse(dep.stdout);
  } catch {
    // no record on stdout: the CLI failed before or while following it (its stderr says why, kept below)
  }
  const steady = windowFigures(load.win.steady, m.deploy - m.steady);
  const during = windowFigures(load.win.deploy, m.tail - m.deploy);
  const tail = windowFigures(load.win.tail, m.end - m.tail);
  const out = {
    strategy: s.key,
    command: `kiln ${s.args.join(' ')}`,
    exitCode: dep.code,
    deployment: rec && {
      id: rec.id,
      kind: rec.kind,
      strategy: rec.strategy,
      release: rec.release?.version,
      state: rec.state,
      verdict: rec.verdict,
      error: rec.error,
      balancer: rec.balancer,
      group: rec.group,
      recordMs: rec.finishedAt ? Date.parse(rec.finishedAt) - Date.parse(rec.createdAt) : null,
      phases: rec.phases,
      batches: rec.batches,
      // each instance's last step, in ms after the record's creation
      instances: Object.fromEntries(Object.entries(rec.instances ?? {}).map(([id, i]) => [id, { step: i.step, atMs: Date.parse(i.at) - Date.parse(rec.createdAt), error: i.error ?? null }])),
    },
    servedAfter: await servedVersions(endpoint),
    succeeded: dep.code === 0 && rec?.state === 'succeeded',
    cliError: dep.code === 0 ? null : dep.stderr.trim().split('\n').slice(-5).join('\n'),
    deployMs: Math.round(deployMs),
    steady,
    during,
    tail,
    // the goal's figures: everything sent from the deploy's spawn until the load stopped
    afterSpawn: { requests: during.requests + tail.requests, failed: during.failed + tail.failed, minReached: during.requests + tail.requests >= MIN_REQUESTS },
    warmup: { requests: load.win.warmup.ok + load.win.warmup.failed, failed: load.win.warmup.failed },
    p99Ratio: steady.p99Ms && during.p99Ms != null ? r2(during.p99Ms / steady.p99Ms) : null,
    failures: load.failures,
    // [second from the deploy's spawn, answered, failed, p99 ms of those answered], steady window to the end
    timeline: [...load.perSecond.entries()].sort(([a], [b]) => a - b).map(([sec, row]) => [sec, row.ok, row.failed, row.latencies.length ? ms2(pct(row.latencies, 99)) : null]),
    // the record's clock against the spawn: its creation, ms after the spawn (its phases follow one another from there)
    recordCreatedMsAfterSpawn: rec?.createdAt ? Date.parse(rec.createdAt) - spawnedAt : null,
    // autocannon's own totals over the whole load (warm-up to stop), to check the counts above against
    autocannon: { answered: total.requests.total, sent: total.requests.sent, non2xx: total.non2xx, errors: total.errors, timeouts: total.timeouts, statusCodeStats: total.statusCodeStats },
    machineBusyCoresBefore: busyBefore,
    machineBusyCoresSteady: r2((m1.busy - m0.busy) / CLK_TCK / ((m.deploy - m.steady) / 1000)),
    machineBusyCoresDeploy: r2((m2.busy - m1.busy) / CLK_TCK / (deployMs / 1000)),
  };
  // the second of the deploy with the highest p99 (of those with at least 100 answers), and what kiln was doing then
  const worst = out.timeline.filter(([sec, ok, , p99]) => sec >= 0 && (sec + 1) * 1000 <= deployMs && ok >= 100 && p99 != null).sort((a, b) => b[3] - a[3])[0];
  out.worstSecond = worst ? { second: worst[0], answered: worst[1], p99Ms: worst[3], phase: phaseAt(out, worst[0] * 1000 + 500) } : null;
  say(
    `  ${s.key}: ${rec?.state ?? `no record (exit ${dep.code})`} in ${r2(deployMs / 1000)} s (${rec?.verdict ?? '-'}; serving ${JSON.stringify(out.servedAfter)}); requests during the deploy ${during.requests}, from its start to the end ${out.afterSpawn.requests}, failed ${out.afterSpawn.failed}` +
      `${out.afterSpawn.failed ? ` (during: ${JSON.stringify(load.win.deploy.failures)}, after: ${JSON.stringify(load.win.tail.failures)})` : ''}; ` +
      `p50/p99 steady ${steady.p50Ms}/${steady.p99Ms} ms, during ${during.p50Ms}/${during.p99Ms} ms (x${out.p99Ratio}); ${steady.perSecond} req/s steady, ${during.perSecond} during; busy ${busyBefore} cores before, ${out.machineBusyCoresDeploy} during; worst second ${out.worstSecond ? `+${out.worstSecond.second} s p99 ${out.worstSecond.p99Ms} ms (${out.worstSecond.phase})` : '-'}`,
  );
  return out;
}

async function oneRun(k, cleanups) {
  const work = await mkdtemp(path.join(os.tmpdir(), 'kiln-bench-traffic-'));
  const home = path.join(work, '.kiln');
  const logFile = path.join(work, 'kiln.log');
  cleanups.push(async () => {
    if (!opt['keep-temp']) await rm(work, { recursive: true, force: true, maxRetries: 3 });
    else say(`kept ${work}`);
  });
  await kilnOk(home, ['keys', 'generate'], { logFile });
  let up;
  // `kiln down` stops what kiln up started (it, the instances, HAProxy); --wipe removes the home too.
  cleanups.push(async () => {
    const down = await kiln(home, ['down', ...(opt['keep-temp'] ? [] : ['--wipe'])], { logFile });
    if (down.code !== 0) say(`kiln down exited ${down.code}: ${down.stderr.trim().slice(-500)}`);
    if (up && !up.child.exited) {
      say(`kiln up (pid ${up.child.pid}) still runs after kiln down: SIGKILL`);
      up.child.kill('SIGKILL');
    }
  });
  up = await kilnUp(home, path.join(work, 'up.log'));
  say(`run ${k}: kiln up ${up.url} (pid ${up.child.pid}); balancer ${up.balancer}; work dir ${work}`);
  for (const v of VERSIONS) {
    const dir = path.join(work, `app-${v}`);
    await cp(DEMO_APP, dir, { recursive: true });
    await writeFile(path.join(dir, 'VERSION'), `${v}\n`);
    await kilnOk(home, ['release', 'push', dir, '--app', APP, '--version', v], { logFile });
  }
  await kilnOk(home, ['fleet', 'create', FLEET, '--app', APP, '--provider', 'process', '--size', String(SIZE)], { logFile });
  const create = await kiln(home, ['deploy', FLEET, 'v1', '--strategy', 'bake', '--json'], { logFile });
  const createRec = JSON.parse(create.stdout || 'null');
  if (create.code !== 0 || createRec?.state !== 'succeeded') throw new Error(`bake v1 (creating the fleet) did not succeed: ${createRec?.verdict ?? create.stderr.slice(-1500)}`);
  const { fleet } = await kilnOk(home, ['fleet', 'show', FLEET, '--json'], { json: true, logFile });
  const endpoint = fleet.endpoint;
  if (!endpoint) throw new Error(`fleet ${FLEET} has no endpoint: kiln up runs no HAProxy (${up.balancer})`);
  say(`run ${k}: fleet ${FLEET} baked from v1 in ${r2(create.ms / 1000)} s; endpoint ${endpoint}`);
  const steps = {};
  for (const s of STRATEGIES) {
    const r = await measure(s, { home, endpoint, logFile });
    steps[s.key] = r;
    // A failed deployment is reported, not hidden; the ones after it would measure another starting point.
    if (!r.succeeded) {
      say(`run ${k}: ${s.key} did not succeed (${r.deployment?.verdict ?? r.cliError}): the run stops here; the kiln log is ${logFile}${opt['keep-temp'] ? '' : ' (use --keep-temp to keep it)'}`);
      break;
    }
  }
  return { createMs: Math.round(create.ms), endpoint, steps };
}

function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const mem = /MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  let commit = null;
  let dirty = null;
  let haproxy = null;
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: TOP, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    dirty = execFileSync('git', ['status', '--porcelain', '--', 'packages'], { cwd: TOP, encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
  } catch {
    // a tree without .git (a `git archive` export, measured apart from work in progress) names its commit here
    commit = process.env.KILN_BENCH_COMMIT ?? null;
  }
  try {
    haproxy = /version (\S+)/.exec(execFileSync('/usr/sbin/haproxy', ['-v'], { encoding: 'utf8' }))?.[1] ?? null;
  } catch {}
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism?.() ?? os.cpus().length,
    memGiB: mem ? r1(Number(mem[1]) / 1024 / 1024) : null,
    node: process.version,
    os: `${os.type()} ${os.release()}`,
    haproxy,
    autocannon: JSON.parse(readFileSync(path.join(TOP, 'node_modules/autocannon/package.json'), 'utf8')).version,
    commit,
    uncommittedInPackages: dirty,
  };
}

const stats = (xs) => {
  const ok = xs.filter((x) => Number.isFinite(x));
  return ok.length ? { median: median(ok), min: Math.min(...ok), max: Math.max(...ok), runs: xs } : null;
};
const sec = (ms) => (ms == null ? '-' : (ms / 1000).toFixed(2));
const num = (n) => (n == null ? '-' : Math.round(n).toLocaleString('en-US'));

/** The summary of `runs` (medians over the runs), and the markdown report of it on stdout. */
function report(runs, machine, error) {
  const summary = {};
  for (const s of STRATEGIES) {
    const done = runs.map((r) => r.steps[s.key]).filter(Boolean);
    if (!done.length) continue;
    const failedRuns = done.map((d) => d.afterSpawn.failed);
    const ratios = done.map((d) => d.p99Ratio);
    const x = {
      what: s.what,
      runs: done.length,
      succeeded: done.map((d) => d.succeeded),
      deployMs: stats(done.map((d) => d.deployMs)),
      recordMs: stats(done.map((d) => d.deployment?.recordMs ?? NaN)),
      requestsDuring: stats(done.map((d) => d.during.requests)),
      requestsTotal: stats(done.map((d) => d.afterSpawn.requests)),
      failed: failedRuns,
      failures: done.map((d) => ({ ...d.during.failures, ...Object.fromEntries(Object.entries(d.tail.failures).map(([k, v]) => [`${k} (after the deploy)`, v])) })),
      steadyFailed: done.map((d) => d.steady.failed),
      p50Steady: stats(done.map((d) => d.steady.p50Ms)),
      p99Steady: stats(done.map((d) => d.steady.p99Ms)),
      p50During: stats(done.map((d) => d.during.p50Ms)),
      p99During: stats(done.map((d) => d.during.p99Ms)),
      maxDuring: stats(done.map((d) => d.during.maxMs)),
      p99Ratio: stats(ratios),
      rateSteady: stats(done.map((d) => d.steady.perSecond)),
      rateDuring: stats(done.map((d) => d.during.perSecond)),
      records: done.map((d) => (d.deployment ? `${d.deployment.kind} ${d.deployment.strategy} → ${d.deployment.release}: ${d.deployment.state}` : `no record (exit ${d.exitCode})`)),
      servedAfter: done.map((d) => d.servedAfter),
      worstSeconds: done.map((d) => d.worstSecond),
      busyBefore: done.map((d) => d.machineBusyCoresBefore),
      busySteady: done.map((d) => d.machineBusyCoresSteady),
      busyDeploy: done.map((d) => d.machineBusyCoresDeploy),
    };
    x.goals = {
      zeroFailed: done.every((d) => d.succeeded && d.afterSpawn.failed === 0 && d.afterSpawn.minReached),
      p99Ratio: x.p99Ratio ? x.p99Ratio.median <= GOALS.p99Ratio : false,
      p99RatioRunsMet: ratios.filter((r) => r != null && r <= GOALS.p99Ratio).length,
      ...(s.key === 'hotfix' ? { hotfixTime: x.deployMs ? x.deployMs.median <= GOALS.hotfixMs : false, hotfixRunsMet: done.filter((d) => d.deployMs <= GOALS.hotfixMs).length } : {}),
    };
    summary[s.key] = x;
  }

  const lines = [];
  lines.push(`## bench:traffic — ${runs.length} run(s), fleet of ${SIZE} on the process provider behind HAProxy`);
  lines.push('');
  lines.push(
    `Machine: ${machine.cores} × ${machine.cpu}, ${machine.memGiB} GiB, Node ${machine.node}, HAProxy ${machine.haproxy}, autocannon ${machine.autocannon}, ${machine.os}; commit ${machine.commit}${machine.uncommittedInPackages ? ` (+${machine.uncommittedInPackages} uncommitted files in packages/)` : ''}; load average ${machine.loadavgStart.join(' ')} → ${machine.loadavgEnd.join(' ')}`,
  );
  lines.push(`Load: autocannon, ${CONNECTIONS} connections, pipelining 1, timeout ${TIMEOUT_S} s; warm-up ${WARMUP_MS / 1000} s, steady ${STEADY_MS / 1000} s, then the deploy and on until ${num(MIN_REQUESTS)} requests sent since its start`);
  lines.push('');
  lines.push('| strategy | deploy wall (s), median (runs) | requests during the deploy | total from its start | failed (per run) | p50 steady → during (ms) | p99 steady → during (ms) | p99 ratio (runs) | req/s steady → during | goals |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const s of STRATEGIES) {
    const x = summary[s.key];
    if (!x) continue;
    const goals = [
      `0 failed: ${x.goals.zeroFailed ? 'met' : 'NOT MET'}`,
      `p99 ≤ 2×: ${x.goals.p99Ratio ? 'met' : 'NOT MET'} (${x.goals.p99RatioRunsMet}/${x.runs} runs)`,
      ...(s.key === 'hotfix' ? [`≤ 3 s: ${x.goals.hotfixTime ? 'met' : 'NOT MET'} (${x.goals.hotfixRunsMet}/${x.runs} runs)`] : []),
    ];
    const failedNote = x.succeeded.some((ok) => !ok) ? ` (deployment failed in run(s) ${x.succeeded.map((ok, i) => (ok ? null : i + 1)).filter(Boolean).join(', ')})` : '';
    lines.push(
      `| ${s.what} | **${sec(x.deployMs?.median)}** (${x.deployMs?.runs.map(sec).join(', ')}) | ${num(x.requestsDuring?.median)} | ${num(x.requestsTotal?.median)} | **${x.failed.reduce((a, b) => a + b, 0)}** (${x.failed.join(', ')})${failedNote} | ${x.p50Steady?.median} → ${x.p50During?.median} | ${x.p99Steady?.median} → ${x.p99During?.median} | **${x.p99Ratio?.median}×** (${x.p99Ratio?.runs.join(', ')}) | ${num(x.rateSteady?.median)} → ${num(x.rateDuring?.median)} | ${goals.join('; ')} |`,
    );
  }
  lines.push('');
  for (const s of STRATEGIES) {
    const x = summary[s.key];
    if (!x) continue;
    const fails = x.failures.map((f, i) => (Object.keys(f).length ? `run ${i + 1}: ${Object.entries(f).map(([k, v]) => `${k} ×${v}`).join(', ')}` : null)).filter(Boolean);
    lines.push(
      `- ${s.key}: ${[...new Set(x.records)].join('; ')}; serving afterwards (6 GETs) ${[...new Set(x.servedAfter.map((v) => Object.entries(v).map(([k, n]) => `${k} ×${n}`).join(', ')))].join(' | ')}; the record's own time (created → finished) median ${sec(x.recordMs?.median)} s; the longest answer during the deploy ${x.maxDuring?.median} ms (median); machine busy ${x.busyBefore.join(', ')} cores before, ${x.busySteady.join(', ')} steady, ${x.busyDeploy.join(', ')} during the deploy` +
        `; the worst second of each deploy (p99): ${x.worstSeconds.map((w) => (w ? `+${w.second} s ${w.p99Ms} ms in ${w.phase}` : '-')).join(', ')}` +
        `${fails.length ? `; failures: ${fails.join('; ')}` : ''}${x.steadyFailed.some(Boolean) ? `; failed in the steady window: ${x.steadyFailed.join(', ')}` : ''}`,
    );
  }
  if (runs.length) lines.push(`- creating the fleet (bake v1 + launch 3, no load): ${runs.map((r) => sec(r.createMs)).join(', ')} s`);
  if (error) lines.push(`- the benchmark stopped: ${error}`);
  console.log(lines.join('\n'));
  return summary;
}

async function main() {
  const machine = { ...machineInfo(), loadavgStart: os.loadavg().map(r2) };
  say(`${machine.cores} cores (${machine.cpu}), Node ${machine.node}, HAProxy ${machine.haproxy}, load average ${machine.loadavgStart.join(' ')}; ${RUNS} run(s), ${CONNECTIONS} connections, ${MIN_REQUESTS} requests per strategy`);
  const runs = [];
  let failure = null;
  for (let k = 1; k <= RUNS && !failure; k++) {
    const cleanups = [];
    const cleanup = cleanupOnce(async () => {
      for (const fn of cleanups.reverse()) await fn().catch((err) => say(`cleanup: ${err.message}`));
    });
    const started = new Date().toISOString();
    try {
      const r = await oneRun(k, cleanups);
      runs.push({ run: k, started, ...r });
      const bad = Object.values(r.steps).find((s) => !s.succeeded);
      if (bad) failure = new Error(`run ${k}: ${bad.strategy} did not succeed: ${bad.deployment?.verdict ?? bad.cliError}`);
    } catch (err) {
      failure = err;
      say(`run ${k} failed: ${err.stack ?? err.message}`);
    } finally {
      await cleanup();
    }
  }
  machine.loadavgEnd = os.loadavg().map(r2);
  const options = { runs: RUNS, connections: CONNECTIONS, pipelining: 1, timeoutS: TIMEOUT_S, warmupMs: WARMUP_MS, steadyMs: STEADY_MS, minRequests: MIN_REQUESTS, fleetSize: SIZE, goals: GOALS };
  const summary = report(runs, machine, failure ? String(failure.message ?? failure) : null);
  const out = { bench: 'traffic', machine, options, summary, runs, error: failure ? String(failure.message ?? failure) : null };
  const file = path.resolve(TOP, opt['json-out']);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify(out) + '\n');
  say(`figures written to ${path.relative(TOP, file)}`);
  process.exit(failure ? 1 : 0);
}

main().catch((err) => {
  console.error(err.stack ?? err);
  process.exit(1);
});
