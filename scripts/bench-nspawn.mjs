#!/usr/bin/env node
// bench:nspawn — real machines (the nspawn provider, root only) against the process provider, with a
// ~50 MiB release (the demo app plus incompressible data) and a fleet of 3. Per provider, in a fresh
// temp home with the embedded S3 and an in-process controller: bake v1 + launch 3 (the fleet is created
// from the provider's base image), hotfix v2 (--batch 100%), relaunch v3 (from the v1 image: install at
// boot), bake v4 + replace; each timed from the POST to the record's finishedAt, with the bake's phases.
// nspawn only: boot of one instance from the baked v4 image to its app answering HTTP (goal <= 3 s),
// --boots times per run. Goals: bake of the ~50 MiB release from the cached base <= 15 s. The providers
// take turns, --runs times each; the report gives medians (and ranges) and nspawn's time as a ratio to
// the process provider's in the same runs.
// Usage: node --openssl-legacy-provider scripts/bench-nspawn.mjs [--runs N (3)] [--data-mib N (50)]
//        [--boots N (5)] [--providers nspawn,process]
// Writes a markdown report to stdout and the figures as JSON (one line). Temp dirs are removed and every
// instance terminated at the end, also on failure.
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { createLogger, createReleaseStore, createS3Client, generateReleaseKeyPair, parsePrivateKey, parsePublicKey, publishRelease } from '@kiln/shared';
import { createNspawnProvider, createProcessProvider, kilnCacheDir, nspawnHostProblem, startEmbeddedS3 } from '@kiln/controller';
import { startBenchController } from './bench-controller.mjs';
import { median, say } from './bench-measure.mjs';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const APP = 'benchapp';
const OPERATOR = 'kfo_operator-token-for-the-nspawn-bench';
const MiB = 1024 * 1024;
const STEPS = [
  { key: 'create', strategy: 'bake', version: 'v1', what: 'bake v1 + launch 3' },
  { key: 'hotfix', strategy: 'hotfix', version: 'v2', what: 'hotfix v2 in place' },
  { key: 'relaunch', strategy: 'relaunch', version: 'v3', what: 'relaunch v3 (install at boot)' },
  { key: 'bake', strategy: 'bake', version: 'v4', what: 'bake v4 + launch 3 + replace' },
];

const { values: opt } = parseArgs({ options: { runs: { type: 'string', default: '3' }, 'data-mib': { type: 'string', default: '50' }, boots: { type: 'string', default: '5' }, providers: { type: 'string', default: 'nspawn,process' } } });
const DATA_MIB = Number(opt['data-mib']);
const BOOTS = Number(opt.boots);
const RUNS = Number(opt.runs);
const log = createLogger({ level: process.env.KILN_BENCH_LOG ?? 'silent', name: 'bench-nspawn' });

const problem = nspawnHostProblem();
const providers = opt.providers.split(',').filter((p) => p !== 'nspawn' || !problem);
if (problem) say(`nspawn left out: ${problem}`);

async function makeRelease(dir, version) {
  await cp(path.join(TOP, 'packages/controller/demo-app'), dir, { recursive: true });
  await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
  await mkdir(path.join(dir, 'blobs'), { recursive: true });
  for (let n = 0; n < 10; n++) await writeFile(path.join(dir, 'blobs', `blob-${n}.bin`), randomBytes(Math.floor((DATA_MIB * MiB) / 10)));
}

async function answersWithin(address, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const res = await fetch(address, { signal: AbortSignal.timeout(1_000) }).catch(() => null);
    if (res?.ok) return true;
    await sleep(20);
  }
  return false;
}

async function runProvider(kind) {
  const work = await mkdtemp(path.join(os.tmpdir(), `kiln-bench-${kind}-`));
  const undo = [() => rm(work, { recursive: true, force: true, maxRetries: 3 })];
  try {
    const s3 = await startEmbeddedS3({ directory: path.join(work, 's3'), bucket: 'kiln' });
    undo.push(() => s3.close());
    const pair = generateReleaseKeyPair();
    const key = parsePrivateKey(pair.privatePem, 'bench key');
    const store = createReleaseStore(createS3Client(s3.location), s3.location.bucket, s3.location.prefix);
    for (const { version } of STEPS) {
      const dir = path.join(work, `app-${version}`);
      await makeRelease(dir, version);
      await publishRelease({ store, app: APP, version, source: dir, key, log });
    }
    const provider = kind === 'nspawn' ? createNspawnProvider({ dir: path.join(work, 'nspawn'), log, cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR) }) : createProcessProvider({ dir: path.join(work, 'process'), log });
    undo.push(async () => {
      await provider.terminate((await provider.describeInstances({})).map((i) => i.id));
      await provider.shutdown?.();
    });
    const server = await startBenchController({ log, s3, signingKey: key, trustedKeys: [parsePublicKey(pair.publicPem, 'bench key')], operator: OPERATOR, provider, serviceManager: kind === 'nspawn' ? 'systemd' : 'process' });
    undo.push(() => server.close());
    const url = `http://127.0.0.1:${server.server.address().port}`;
    const api = async (method, p, body) => {
      const res = await fetch(url + p, { method, headers: { authorization: `Bearer ${OPERATOR}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
      const json = await res.json();
      if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(json)}`);
      return json;
    };
    const t = Date.now();
    const created = await api('POST', '/v1/fleets', { name: 'web', app: APP, provider: kind, size: 3 });
    const baseMs = Date.now() - t;
    const steps = {};
    for (const s of STEPS) {
      const t0 = Date.now();
      let rec = (await api('POST', '/v1/deployments', { fleet: 'web', version: s.version, strategy: s.strategy, batch: { percent: 100 }, healthTimeoutMs: 120_000 })).deployment;
      while (rec.state === 'running') {
        await sleep(100);
        rec = (await api('GET', `/v1/deployments/${rec.id}`)).deployment;
      }
      if (rec.state !== 'succeeded') throw new Error(`${kind} ${s.key}: ${rec.state} ${JSON.stringify(rec.error)}`);
      steps[s.key] = { ms: Date.parse(rec.finishedAt) - t0, phases: Object.fromEntries(rec.phases.map((p) => [p.name, p.ms])), image: rec.image };
      say(`${kind}: ${s.what}: ${steps[s.key].ms} ms`);
    }
    const boots = [];
    if (kind === 'nspawn') {
      // One instance from the baked v4 image, as a group launch makes it: app answering HTTP, from the launch call.
      const boot = { agent: { app: APP, channel: 'stable', s3: s3.location, controller: { url: `ws://127.0.0.1:${server.server.address().port}/v1/agents`, credential: created.agentCredential }, keys: [pair.publicPem] } };
      for (let n = 0; n < BOOTS; n++) {
        const t0 = Date.now();
        const [inst] = await provider.launch({ imageId: steps.bake.image, count: 1, tags: { 'kiln:role': 'bench' }, boot });
        const bootedMs = Date.now() - t0;
        if (!(await answersWithin(inst.address, 30_000))) throw new Error(`${inst.id} never answered on ${inst.address}`);
        boots.push({ bootedMs, healthyMs: Date.now() - t0 });
        await provider.terminate([inst.id]);
      }
    }
    return { baseImageMs: baseMs, steps, boots };
  } finally {
    for (const fn of undo.reverse()) await fn().catch((err) => say(`cleanup: ${err.message}`));
  }
}

const results = Object.fromEntries(providers.map((p) => [p, []]));
for (let n = 1; n <= RUNS; n++) {
  for (const kind of providers) {
    say(`run ${n} of ${RUNS}: ${kind}`);
    results[kind].push(await runProvider(kind));
  }
}

const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
/** median and range of `f` over a provider's runs, in seconds */
const spread = (kind, f) => {
  const xs = results[kind].map(f);
  return `${secs(median(xs))} (${secs(Math.min(...xs))}–${secs(Math.max(...xs))})`;
};
const stepMs = (kind, key) => median(results[kind].map((r) => r.steps[key].ms));
const both = providers.includes('nspawn') && providers.includes('process');
const lines = [
  `## bench:nspawn (${DATA_MIB} MiB release, fleet of 3, ${os.cpus().length} cores, ${RUNS} runs: median (min–max))`,
  '',
  `| step | ${providers.join(' | ')}${both ? ' | nspawn / process |' : ' |'}`,
  `|---|${providers.map(() => '---').join('|')}${both ? '|---|' : '|'}`,
];
for (const s of STEPS) {
  const ratio = both ? ` | ${(stepMs('nspawn', s.key) / stepMs('process', s.key)).toFixed(2)}× |` : ' |';
  lines.push(`| ${s.what} | ${providers.map((p) => spread(p, (r) => r.steps[s.key].ms)).join(' | ')}${ratio}`);
}
for (const p of providers) {
  const phases = (key) => Object.entries(results[p][0].steps[key].phases).filter(([k]) => k.startsWith('bake:')).map(([k]) => `${k.slice(5)} ${secs(median(results[p].map((r) => r.steps[key].phases[k] ?? 0)))}`).join(', ');
  lines.push(
    '',
    `${p}: base image ${spread(p, (r) => r.baseImageMs)}; bake of v1 ${spread(p, (r) => r.steps.create.phases.bake ?? NaN)} (${phases('create')}); bake of v4 ${spread(p, (r) => r.steps.bake.phases.bake ?? NaN)} (${phases('bake')})`,
  );
}
const boots = (results.nspawn ?? []).flatMap((r) => r.boots);
if (boots.length) lines.push('', `nspawn boot from the baked image to app answering HTTP: median ${median(boots.map((b) => b.healthyMs))} ms (${Math.min(...boots.map((b) => b.healthyMs))}–${Math.max(...boots.map((b) => b.healthyMs))}; machine running: ${median(boots.map((b) => b.bootedMs))} ms), ${boots.length} boots`);
console.log(lines.join('\n'));
console.log(JSON.stringify({ dataMib: DATA_MIB, runs: RUNS, results }));
