#!/usr/bin/env node
// bench:strategies — the three ways to ship, side by side, on the `process` provider: a fleet of 3
// real agents (each its own process, root copy and app) and a ~50 MiB release (the demo app plus
// incompressible data). Per run, in a fresh temp home: bake v1 to create the fleet, then hotfix v2
// (--batch 100%), relaunch v3 (from the fleet's current image) and bake v4 (bake + replace), each timed
// from the POST to the record's finishedAt (goals: hotfix <= 2 s, relaunch <= 5 s, bake + replace <= 10 s),
// with the record's phases; then relaunch v5 (v4 with one file changed) from the v4 image: the bytes each
// instance fetched at boot (issue 14: a format 2 release fetches only what the image lacks), read from
// its state.json. S3 GETs of release content (format 1 `…/artifact.tar.gz`, format 2 `objects/<app>/…`)
// are counted on the embedded S3's own HTTP server, split into the builder's part and the part from the
// new group's launch to the end (goal: a launch from a baked image downloads nothing).
// Usage: node --openssl-legacy-provider scripts/bench-strategies.mjs [--runs N (3)] [--data-mib N (50)]
//        [--files N (10)] [--format 1|2 (2: the release format pushed)] [--health-timeout S (300)] [--quiet-wait S (20: the longest wait, before each
//        deployment, for the machine to use < 0.5 core)] [--json-out FILE (default bench-results/strategies.json)]
//        [--keep-temp] [--agent-logs DIR (copies every instance's agent log there after each deployment)]
//        [--report FILE... (no run: the report of the runs in earlier JSON files, pooled)]
// Writes a markdown report to stdout and the figures as JSON (one line, also to the file). Each run's temp
// dir is removed at its end (also on failure or Ctrl-C); every instance it launched is terminated.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';

import { createLogger, createReleaseStore, createS3Client, generateReleaseKeyPair, parsePrivateKey, parsePublicKey, publishRelease } from '@kiln/shared';
import { createProcessProvider, startEmbeddedS3 } from '@kiln/controller';
import { startBenchController } from './bench-controller.mjs';
import { CLK_TCK, cleanupOnce, intOption, machineTicks, median, waitQuiet, printUsage, r1, r2, say, startObservedS3 } from './bench-measure.mjs';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SELF = fileURLToPath(import.meta.url);
const DEMO_APP = path.join(TOP, 'packages/controller/demo-app');
const APP = 'benchapp';
const FLEET = 'web';
const SIZE = 3;
const OPERATOR = 'kfo_operator-token-for-the-strategies-bench';
const MiB = 1024 * 1024;
const GOALS = { hotfix: 2_000, relaunch: 5_000, bake: 10_000 };
const STEPS = [
  { key: 'create', strategy: 'bake', version: 'v1', what: 'bake v1 + launch 3 (the fleet is created from the base image)' },
  { key: 'hotfix', strategy: 'hotfix', version: 'v2', what: 'hotfix v2 in place, --batch 100%' },
  { key: 'relaunch', strategy: 'relaunch', version: 'v3', what: 'relaunch v3 from the current (v1) image: install at boot' },
  { key: 'bake', strategy: 'bake', version: 'v4', what: 'bake v4 + launch 3 from it + replace' },
  // v5 is v4 with its VERSION file rewritten: the image the fleet has after bake v4 holds all of v5 but one file.
  { key: 'relaunchDelta', strategy: 'relaunch', version: 'v5', from: 'v4', what: 'relaunch v5 (v4 + 1 changed file) from the v4 image: install at boot' },
];

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    runs: { type: 'string', default: '3' },
    'data-mib': { type: 'string', default: '50' },
    files: { type: 'string', default: '10' },
    format: { type: 'string', default: '2' },
    'health-timeout': { type: 'string', default: '300' },
    'quiet-wait': { type: 'string', default: '20' },
    'json-out': { type: 'string', default: 'bench-results/strategies.json' },
    'keep-temp': { type: 'boolean', default: false },
    'agent-logs': { type: 'string' },
    report: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (positionals.length && !opt.report) {
  console.error(`unexpected argument ${positionals[0]} (files are for --report)`);
  process.exit(2);
}
if (opt.help) {
  printUsage(SELF);
  process.exit(0);
}
const int = intOption(opt);
const RUNS = int('runs', 1);
const DATA_MIB = int('data-mib', 0);
const FILES = int('files', 1);
const FORMAT = int('format', 1);
if (FORMAT > 2) {
  console.error(`--format ${FORMAT}: 1 or 2`);
  process.exit(2);
}
const HEALTH_TIMEOUT_MS = int('health-timeout', 1) * 1000;
const QUIET_WAIT_S = int('quiet-wait', 0);

const log = createLogger({ level: process.env.KILN_BENCH_LOG ?? 'silent', name: 'bench-strategies' });

/**
 * A GET of release content, or null: a format 1 artifact (with its version) or a format 2 content
 * object (a pack or a large file: no version, the object name).
 */
function contentGet(g) {
  let m = /\/releases\/[^/]+\/([^/]+)\/artifact\.tar\.gz$/.exec(g.key);
  if (m) return Object.assign(g, { version: m[1], object: 'artifact.tar.gz' });
  m = /\/objects\/[^/]+\/([^/]+)$/.exec(g.key);
  if (m) return Object.assign(g, { version: null, object: m[1] });
  return null;
}

/** The demo app plus `FILES` files of random bytes (DATA_MIB in all), VERSION set to the version. */
async function makeRelease(dir, version) {
  await cp(DEMO_APP, dir, { recursive: true });
  await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
  await mkdir(path.join(dir, 'blobs'), { recursive: true });
  const per = Math.floor((DATA_MIB * MiB) / FILES);
  for (let n = 0; n < FILES; n++) await writeFile(path.join(dir, 'blobs', `blob-${String(n).padStart(2, '0')}.bin`), randomBytes(per));
}

/**
 * What an instance's agent log (pino JSON lines) says happened from `t0` on, in ms after `t0`: its first
 * line, when it connected to the controller, the install routine's step timings, and its boot outcome
 * (`downloaded`: whether the boot install fetched the artifact).
 */
async function agentTimeline(root, t0) {
  const text = await readFile(path.join(root, 'var/log/kiln-agent.log'), 'utf8').catch(() => '');
  const out = { firstMs: null, connectedMs: null, installs: [], boot: null };
  for (const line of text.split('\n')) {
    let j;
    try {
      j = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof j.time !== 'number' || j.time < t0) continue;
    const at = j.time - t0;
    out.firstMs ??= at;
    if (j.msg === 'connected to the controller') out.connectedMs ??= at;
    else if (j.msg === 'installed' && j.timings) out.installs.push({ atMs: at, version: j.version, timings: j.timings });
    else if (j.msg === 'boot: the channel is installed') out.boot = { atMs: at, version: j.version, outcome: j.outcome, downloaded: j.downloaded };
  }
  return out;
}

const sumBytes = (gets) => gets.reduce((n, g) => n + (Number.isFinite(g.bytes) ? g.bytes : 0), 0);

/** What an instance's state.json says is installed: version, via, and what its install fetched of the release's size. */
async function installedState(root) {
  const text = await readFile(path.join(root, 'var/lib/kiln/apps', APP, 'state.json'), 'utf8').catch(() => null);
  if (!text) return null;
  const cur = JSON.parse(text).current;
  return cur ? { version: cur.version, via: cur.via, fetchedBytes: cur.fetchedBytes ?? null, releaseBytes: cur.releaseBytes ?? null } : null;
}

async function oneRun(k, cleanups) {
  const work = await mkdtemp(path.join(os.tmpdir(), 'kiln-bench-strategies-'));
  const home = path.join(work, '.kiln');
  cleanups.push(async () => {
    if (!opt['keep-temp']) await rm(work, { recursive: true, force: true, maxRetries: 3 });
  });
  const s3 = await startObservedS3(startEmbeddedS3, { directory: path.join(home, 's3'), bucket: 'kiln' });
  cleanups.push(() => s3.close());
  const pair = generateReleaseKeyPair();
  const key = parsePrivateKey(pair.privatePem, 'the benchmark key');
  const pub = parsePublicKey(pair.publicPem, 'the benchmark key');
  const store = createReleaseStore(createS3Client(s3.location), s3.location.bucket, s3.location.prefix);

  const release = {};
  for (const { version, from } of STEPS) {
    const dir = path.join(work, `app-${version}`);
    if (from) await cp(path.join(work, `app-${from}`), dir, { recursive: true, preserveTimestamps: true });
    else await makeRelease(dir, version);
    if (from) await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
    const res = await publishRelease({ store, app: APP, version, source: dir, key, log, format: FORMAT });
    const m = res.manifest;
    const manifestBytes = (await store.getManifest(APP, version)).bytes.length;
    // format 1: the artifact; format 2: the stored bytes of its contents (storedSize), what a download of the whole release reads
    const storedBytes = m.schema === 1 ? m.artifact.size : Object.values(m.content.blobs).reduce((n, b) => n + b.length, 0);
    release[version] = { format: m.schema, storedBytes, uploadedBytes: res.uploadedBytes, skippedBytes: res.skippedBytes, manifestBytes, unpackedBytes: m.unpackedSize, entries: m.files.length, ...(m.schema === 1 ? { artifactBytes: m.artifact.size } : {}) };
  }
  for (const { version } of STEPS) await rm(path.join(work, `app-${version}`), { recursive: true, force: true });
  const last = STEPS.at(-1).version;
  say(`run ${k}: published ${STEPS.map((s) => s.version).join(', ')} (format ${FORMAT}): ${r1(release.v1.storedBytes / MiB)} MiB stored, ${r1(release.v1.unpackedBytes / MiB)} MiB unpacked, ${release.v1.entries} entries; ${last} uploaded ${release[last].uploadedBytes} bytes`);

  // The provider `kiln up` runs; its launches are stamped so that S3 GETs can be put before or after them.
  const provider = createProcessProvider({ dir: path.join(home, 'process'), log });
  const launches = [];
  const launch = provider.launch.bind(provider);
  provider.launch = async (spec) => {
    const stamp = { at: Date.now(), role: spec.tags['kiln:role'] === 'builder' ? 'builder' : 'group', group: spec.tags['kiln:group'] ?? null, ids: [] };
    launches.push(stamp);
    const out = await launch(spec);
    stamp.ids = out.map((i) => i.id);
    stamp.doneAt = Date.now();
    return out;
  };
  cleanups.push(async () => {
    const left = await provider.describeInstances({}).catch(() => []);
    await provider.terminate(left.map((i) => i.id)).catch((err) => say(`cannot terminate ${left.map((i) => i.id).join(', ')}: ${err.message}`));
  });
  // The controller as `kiln up` builds it (startLocalController): the process provider, agents on the same S3.
  const server = await startBenchController({ log, s3, signingKey: key, trustedKeys: [pub], operator: OPERATOR, provider, serviceManager: 'process' });
  // The controller first: it stops its rollouts and says goodbye to the agents (pushed last, run first).
  cleanups.push(() => server.close());
  const url = `http://127.0.0.1:${server.server.address().port}`;

  async function api(method, p, body) {
    const res = await fetch(url + p, {
      method,
      headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(30_000),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  await api('POST', '/v1/fleets', { name: FLEET, app: APP, provider: 'process', size: SIZE });

  const results = {};
  for (const s of STEPS) {
    const busyBefore = await waitQuiet(QUIET_WAIT_S);
    const m0 = machineTicks();
    const launchesBefore = launches.length;
    const getsBefore = s3.gets.length;
    const t0 = Date.now();
    const posted = await api('POST', '/v1/deployments', { fleet: FLEET, version: s.version, strategy: s.strategy, batch: { percent: 100 }, healthTimeoutMs: HEALTH_TIMEOUT_MS });
    const answeredMs = Date.now() - t0;
    let rec = posted.deployment;
    while (rec.state === 'running') {
      await sleep(100);
      rec = (await api('GET', `/v1/deployments/${rec.id}`)).deployment;
    }
    const seenMs = Date.now() - t0;
    const m1 = machineTicks();
    const wallMs = rec.finishedAt ? Date.parse(rec.finishedAt) - t0 : seenMs;
    // Let the last responses finish (a GET whose body is still streaming has no endAt yet).
    await sleep(200);
    const gets = s3.gets.slice(getsBefore).map(contentGet).filter(Boolean);
    const mine = launches.slice(launchesBefore);
    const groupLaunch = mine.find((l) => l.role === 'group');
    const builderLaunch = mine.find((l) => l.role === 'builder');
    const rel = (t) => (t == null ? null : t - t0);
    const downloads = {
      total: gets.length,
      // Before the new group's first launch call: the builder's boot install (bake) or the in-place installs (hotfix).
      beforeGroupLaunch: groupLaunch ? gets.filter((g) => g.at < groupLaunch.at).length : gets.length,
      // From the new group's launch to the end of the deployment (launch, health, live, retire).
      fromGroupLaunch: groupLaunch ? gets.filter((g) => g.at >= groupLaunch.at).length : 0,
      versions: [...new Set(gets.map((g) => g.version).filter(Boolean))],
      bytes: sumBytes(gets),
      bytesBeforeGroupLaunch: sumBytes(groupLaunch ? gets.filter((g) => g.at < groupLaunch.at) : gets),
      bytesFromGroupLaunch: sumBytes(groupLaunch ? gets.filter((g) => g.at >= groupLaunch.at) : []),
      gets: gets.map((g) => ({ version: g.version, object: g.object, startMs: rel(g.at), endMs: rel(g.endAt), status: g.status, bytes: g.bytes, range: g.range })),
    };
    const insts = (await api('GET', `/v1/fleets/${FLEET}/instances`)).instances;
    // The agents that did this deployment's work: the new group's, or (hotfix) the fleet's live ones.
    const workers = rec.group ? insts.filter((i) => i.group === rec.group) : insts.filter((i) => rec.instances[i.instanceId]);
    const launchedAt = Object.fromEntries((await provider.describeInstances({})).map((i) => [i.id, Date.parse(i.launchedAt) - t0]));
    const agents = {};
    for (const i of workers) {
      const root = path.join(home, 'process/instances', i.instanceId, 'root');
      agents[i.instanceId] = { launchedMs: rec.group ? (launchedAt[i.instanceId] ?? null) : null, ...(await agentTimeline(root, t0)), installed: await installedState(root) };
    }
    if (opt['agent-logs']) {
      const to = path.resolve(opt['agent-logs'], `run-${k}`, s.key);
      await mkdir(to, { recursive: true });
      await writeFile(path.join(to, 't0'), `${new Date(t0).toISOString()}\n`);
      for (const i of await provider.describeInstances({})) {
        await cp(path.join(home, 'process/instances', i.id, 'root/var/log/kiln-agent.log'), path.join(to, `${i.id}.log`)).catch(() => undefined);
      }
    }
    results[s.key] = {
      strategy: s.strategy,
      version: s.version,
      state: rec.state,
      verdict: rec.verdict,
      error: rec.error,
      group: rec.group,
      image: rec.image,
      wallMs,
      postAnsweredMs: answeredMs,
      seenByPollMs: seenMs,
      phases: rec.phases,
      builderLaunchMs: builderLaunch ? rel(builderLaunch.at) : null,
      groupLaunchMs: groupLaunch ? rel(groupLaunch.at) : null,
      groupLaunchCallMs: groupLaunch ? groupLaunch.doneAt - groupLaunch.at : null,
      instanceSteps: Object.fromEntries(Object.entries(rec.instances).map(([id, i]) => [id, { step: i.step, atMs: Date.parse(i.at) - t0 }])),
      downloads,
      agents,
      instances: insts.map((i) => ({ id: i.instanceId, group: i.group, installed: i.installed, via: i.via, image: i.image, drift: i.drift })),
      machineBusyCoresBefore: busyBefore,
      machineBusyCoresDuring: r2((m1.busy - m0.busy) / CLK_TCK / (seenMs / 1000)),
    };
    const inPhases = rec.phases.filter((p) => !p.name.startsWith('bake:')).reduce((n, p) => n + p.ms, 0);
    results[s.key].notInPhasesMs = rec.phases.length ? wallMs - inPhases : null;
    say(
      `run ${k}: ${s.strategy} ${s.version}: ${rec.state} in ${r2(wallMs / 1000)} s; phases ${rec.phases.map((p) => `${p.name} ${p.ms}`).join(', ') || '-'}${rec.phases.length ? `, not in phases ${wallMs - inPhases}` : ''}; content GETs ${downloads.beforeGroupLaunch} (${downloads.bytesBeforeGroupLaunch} B) before the group launch, ${downloads.fromGroupLaunch} (${downloads.bytesFromGroupLaunch} B) after; fetched per instance (state.json) ${Object.values(agents).map((a) => a.installed?.fetchedBytes ?? '-').join(',')} B; boot downloads ${Object.values(agents).map((a) => a.boot?.downloaded ?? '-').join(',')} (machine busy ${busyBefore} cores before, ${results[s.key].machineBusyCoresDuring} during)`,
    );
    if (rec.state !== 'succeeded') throw new Error(`${s.strategy} ${s.version} ended ${rec.state}: ${rec.verdict}`);
  }
  return { release, steps: results };
}

function machineInfo() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const mem = /MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'));
  let commit = null;
  let dirty = null;
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: TOP, encoding: 'utf8' }).trim();
    dirty = execFileSync('git', ['status', '--porcelain', '--', 'packages'], { cwd: TOP, encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
  } catch {}
  return {
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism?.() ?? os.cpus().length,
    memGiB: mem ? r1(Number(mem[1]) / 1024 / 1024) : null,
    node: process.version,
    os: `${os.type()} ${os.release()}`,
    commit,
    uncommittedInPackages: dirty,
  };
}

const medianOf = (xs) => {
  const ok = xs.filter((x) => Number.isFinite(x));
  return ok.length ? median(ok) : null;
};

/** Medians over every agent of every run: start-up, boot, and the install routine's steps. */
function agentSummary(done) {
  const all = done.flatMap((d) => Object.values(d.agents));
  const installs = all.flatMap((a) => a.installs);
  const steps = [...new Set(installs.flatMap((i) => Object.keys(i.timings)))];
  return {
    n: all.length,
    launchedToConnectedMs: medianOf(all.map((a) => (a.launchedMs == null || a.connectedMs == null ? NaN : a.connectedMs - a.launchedMs))),
    launchedToBootDoneMs: medianOf(all.map((a) => (a.launchedMs == null || !a.boot ? NaN : a.boot.atMs - a.launchedMs))),
    installedAtMs: medianOf(installs.map((i) => i.atMs)),
    installTimingsMs: Object.fromEntries(steps.map((n) => [n, medianOf(installs.map((i) => i.timings[n]))])),
  };
}

const stats = (xs) => (xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), runs: xs } : null);
const sec = (ms) => (ms == null ? '-' : (ms / 1000).toFixed(2));

async function main() {
  const machine = { ...machineInfo(), loadavgStart: os.loadavg().map(r2) };
  say(`${machine.cores} cores (${machine.cpu}), Node ${machine.node}, load average ${machine.loadavgStart.join(' ')}; ${RUNS} runs, ${DATA_MIB} MiB of random data in ${FILES} files`);
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
    } catch (err) {
      failure = err;
      say(`run ${k} failed: ${err.stack ?? err.message}`);
    } finally {
      await cleanup();
    }
  }
  machine.loadavgEnd = os.loadavg().map(r2);
  const options = { runs: RUNS, dataMiB: DATA_MIB, files: FILES, fleetSize: SIZE, healthTimeoutMs: HEALTH_TIMEOUT_MS };
  const summary = report(runs, machine);
  const out = { bench: 'strategies', machine, options, summary, runs, error: failure ? String(failure.message ?? failure) : null };
  const json = JSON.stringify(out);
  console.log(json);
  const file = path.resolve(TOP, opt['json-out']);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, json + '\n');
  say(`figures written to ${path.relative(TOP, file)}`);
  process.exit(failure ? 1 : 0);
}

/** The summary of `runs` (medians over the runs), and the markdown report of it on stdout. */
function report(runs, machine) {
  const summary = {};
  for (const s of STEPS) {
    const done = runs.map((r) => r.steps[s.key]).filter(Boolean);
    const phaseNames = [...new Set(done.flatMap((d) => d.phases.map((p) => p.name)))];
    summary[s.key] = {
      what: s.what,
      wallMs: stats(done.map((d) => d.wallMs)),
      goalMs: GOALS[s.key] ?? null,
      ratio: GOALS[s.key] && done.length ? r2(median(done.map((d) => d.wallMs)) / GOALS[s.key]) : null,
      // only the deployments that started on a quiet machine (< 0.5 core busy in the 2 s before the POST)
      quietWallMs: stats(done.filter((d) => d.machineBusyCoresBefore < 0.5).map((d) => d.wallMs)),
      phasesMedianMs: Object.fromEntries(phaseNames.map((n) => [n, median(done.map((d) => d.phases.filter((p) => p.name === n).reduce((a, p) => a + p.ms, 0)))])),
      contentGets: { beforeGroupLaunch: done.map((d) => d.downloads.beforeGroupLaunch), fromGroupLaunch: done.map((d) => d.downloads.fromGroupLaunch) },
      contentBytes: { beforeGroupLaunch: done.map((d) => d.downloads.bytesBeforeGroupLaunch ?? null), fromGroupLaunch: done.map((d) => d.downloads.bytesFromGroupLaunch ?? null) },
      // what each instance that did the work fetched for its install, from its state.json (all runs pooled)
      fetchedBytesPerInstance: stats(done.flatMap((d) => Object.values(d.agents).map((a) => a.installed?.fetchedBytes)).filter((x) => Number.isFinite(x))),
      releaseBytes: medianOf(done.flatMap((d) => Object.values(d.agents).map((a) => a.installed?.releaseBytes ?? NaN))),
      // how the instances of the group the deployment made live (all of the fleet's, for a hotfix) got their release
      vias: [...new Set(done.flatMap((d) => d.instances.filter((i) => !d.group || i.group === d.group).map((i) => `${i.installed} via ${i.via}`)))],
      notInPhasesMs: done.some((d) => d.notInPhasesMs != null) ? median(done.map((d) => d.notInPhasesMs ?? 0)) : null,
      // the agents that did the work, all runs pooled: medians in ms
      agents: agentSummary(done),
      // the content GETs of the deployment (all runs pooled): from the POST, and each one's duration
      firstGetMs: medianOf(done.map((d) => Math.min(...d.downloads.gets.map((g) => g.startMs)))),
      lastGetEndMs: medianOf(done.map((d) => Math.max(...d.downloads.gets.map((g) => g.endMs ?? NaN)))),
      getMs: medianOf(done.flatMap((d) => d.downloads.gets.map((g) => g.endMs - g.startMs))),
      bootDownloaded: done.flatMap((d) => Object.values(d.agents).map((a) => a.boot?.downloaded ?? null)),
      busyBefore: done.map((d) => d.machineBusyCoresBefore),
      busyDuring: done.map((d) => d.machineBusyCoresDuring),
    };
  }

  // The report.
  const lines = [];
  lines.push(`## bench:strategies — ${runs.length} run(s), fleet of ${SIZE} on the process provider`);
  lines.push('');
  lines.push(`Machine: ${machine.cores} × ${machine.cpu}, ${machine.memGiB} GiB, Node ${machine.node}, ${machine.os}; commit ${machine.commit}${machine.uncommittedInPackages ? ` (+${machine.uncommittedInPackages} uncommitted files in packages/)` : ''}; load average ${machine.loadavgStart.join(' ')} → ${machine.loadavgEnd.join(' ')}`);
  if (runs[0]) {
    const v = runs[0].release.v1;
    lines.push(`Release: format ${v.format ?? 1}, ${v.entries} entries, ${r1(v.unpackedBytes / MiB)} MiB unpacked, ${r1((v.storedBytes ?? v.artifactBytes) / MiB)} MiB stored${v.manifestBytes ? `, manifest ${v.manifestBytes} bytes` : ''}`);
  }
  lines.push('');
  lines.push('| deployment | median (s) | min | max | runs | goal | ratio | quiet starts: median (n) | content GETs: before the group launch / from it |');
  lines.push('|---|---|---|---|---|---|---|---|---|');
  for (const s of STEPS) {
    const x = summary[s.key];
    if (!x.wallMs) continue;
    lines.push(
      `| ${s.what} | **${sec(x.wallMs.median)}** | ${sec(x.wallMs.min)} | ${sec(x.wallMs.max)} | ${x.wallMs.runs.map(sec).join(', ')} | ${x.goalMs ? `≤ ${x.goalMs / 1000} s` : '-'} | ${x.ratio != null ? `${x.ratio}× ${x.ratio <= 1 ? 'met' : 'MISSED'}` : '-'} | ${x.quietWallMs ? `${sec(x.quietWallMs.median)} (${x.quietWallMs.runs.length})` : '-'} | ${x.contentGets.beforeGroupLaunch.join(',')} / ${x.contentGets.fromGroupLaunch.join(',')} |`,
    );
  }
  lines.push('');
  lines.push('Phase medians (ms, from the deployment records):');
  for (const s of STEPS) {
    const x = summary[s.key];
    const ph = Object.entries(x.phasesMedianMs);
    if (ph.length) lines.push(`- ${s.key}: ${ph.map(([n, ms]) => `${n} ${ms}`).join(', ')}`);
  }
  lines.push('');
  lines.push('The agents that did the work (medians over all runs, ms after the POST unless said):');
  for (const s of STEPS) {
    const x = summary[s.key];
    if (!x.wallMs) continue;
    const a = x.agents;
    const parts = [];
    if (a.launchedToConnectedMs != null) parts.push(`launched → connected ${a.launchedToConnectedMs}`);
    if (a.launchedToBootDoneMs != null) parts.push(`launched → boot install done ${a.launchedToBootDoneMs}`);
    if (a.installedAtMs != null) parts.push(`install done at ${a.installedAtMs} (${Object.entries(a.installTimingsMs).map(([n, ms]) => `${n} ${ms}`).join(', ')})`);
    // (a baked instance's state.json holds what the builder fetched: left out)
    if (x.fetchedBytesPerInstance && s.strategy !== 'bake') parts.push(`fetched per instance (state.json) ${x.fetchedBytesPerInstance.median} B of ${x.releaseBytes} B`);
    if (x.firstGetMs != null) parts.push(`content GETs: first at ${x.firstGetMs}, each ${x.getMs}, last ends at ${x.lastGetEndMs}`);
    if (x.notInPhasesMs != null) parts.push(`not in the record's phases ${x.notInPhasesMs}`);
    parts.push(`boot downloads ${x.bootDownloaded.map((b) => (b == null ? '-' : b)).join(',')}`);
    parts.push(`machine busy before each POST (cores) ${x.busyBefore.join(', ')}`);
    lines.push(`- ${s.key}: ${parts.join('; ')}`);
  }
  for (const r of runs) {
    const b = r.steps.bake;
    if (b) lines.push(`- run ${r.run} bake v4: builder launched at ${sec(b.builderLaunchMs)} s, group launch at ${sec(b.groupLaunchMs)} s (the launch call: copying 3 roots, ${sec(b.groupLaunchCallMs)} s); new instances: ${b.instances.map((i) => `${i.id} ${i.installed} via ${i.via}`).join(', ')}`);
  }
  const d = summary.relaunchDelta;
  if (d?.fetchedBytesPerInstance) {
    const last = runs[0].release[STEPS.at(-1).version];
    lines.push('');
    lines.push(`Relaunch from an image holding the previous release (issue 14): ${d.what}. Bytes each instance fetched (its state.json \`current.fetchedBytes\`): median **${d.fetchedBytesPerInstance.median} B** (min ${d.fetchedBytesPerInstance.min}, max ${d.fetchedBytesPerInstance.max}, ${d.fetchedBytesPerInstance.runs.length} instances) of a release of ${d.releaseBytes} B stored (\`releaseBytes\`; ${r1((last?.unpackedBytes ?? 0) / MiB)} MiB unpacked; its manifest ${last?.manifestBytes ?? '-'} B, fetched besides); content bytes the S3 served from the group launch on, per run: ${d.contentBytes.fromGroupLaunch.join(', ')}. For comparison, relaunch v3 from the v1 image (a wholly new release): ${summary.relaunch?.fetchedBytesPerInstance?.median ?? '-'} B per instance.`);
  }
  console.log(lines.join('\n'));
  return summary;
}

if (opt.report) {
  // The runs of earlier JSON files, pooled (renumbered), reported again; the machine is the first file's.
  const files = positionals.map((f) => JSON.parse(readFileSync(f, 'utf8')));
  const runs = files.flatMap((f) => f.runs).map((r, n) => ({ ...r, run: n + 1 }));
  const machine = { ...files[0].machine, loadavgEnd: files.at(-1).machine.loadavgEnd };
  report(runs, machine);
  process.exit(0);
}

main().catch((err) => {
  console.error(err.stack ?? err);
  process.exit(1);
});
