#!/usr/bin/env node
// Runs kiln from a fresh clone with nothing but Node >= 20 and npm: installs the workspace with pnpm
// (through npx), builds it, then runs the demo, the test suite, a benchmark or the dependency rules.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PNPM = ['-y', 'pnpm@10.34.8'];
const [mode, ...rest] = process.argv.slice(2);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: top, stdio: 'inherit', ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

function must(cmd, args, what) {
  const code = run(cmd, args);
  if (code !== 0) {
    console.error(`kiln: ${what} failed (exit ${code})`);
    process.exit(code);
  }
}

const [major] = process.versions.node.split('.').map(Number);
if (major < 20) {
  console.error(`kiln needs Node >= 20; this is ${process.version}`);
  process.exit(1);
}

// Install when node_modules is missing or older than the lockfile.
const marker = path.join(top, 'node_modules/.modules.yaml');
const lock = path.join(top, 'pnpm-lock.yaml');
if (!existsSync(marker) || statSync(lock).mtimeMs > statSync(marker).mtimeMs) {
  must('npx', [...PNPM, 'install', '--frozen-lockfile'], 'installing dependencies');
}
must(process.execPath, [path.join(top, 'node_modules/typescript/bin/tsc'), '-b'], 'building');

// s3rver encrypts list continuation tokens with DES, which Node 20 only offers with the legacy provider.
const nodeArgs = ['--openssl-legacy-provider'];

if (mode === 'demo') {
  process.exit(run(process.execPath, [...nodeArgs, 'packages/controller/dist/main.js', 'demo', ...rest]));
} else if (mode === 'test') {
  mkdirSync(path.join(top, 'test-results'), { recursive: true });
  const report = path.join(top, 'test-results/vitest.json');
  // Everything the tests put in temp dirs goes in one directory, removed afterwards.
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'kiln-test-run-'));
  const code = run(process.execPath, [path.join(top, 'node_modules/vitest/vitest.mjs'), 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...rest], {
    env: {
      ...process.env,
      TMPDIR: tmp,
      ...(process.stdout.isTTY ? {} : { NO_COLOR: '1' }),
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --openssl-legacy-provider`.trim(),
    },
  });
  try {
    rmSync(tmp, { recursive: true, force: true, maxRetries: 3 });
  } catch (err) {
    console.error(`kiln: could not remove the tests' temp dir ${tmp}: ${err.message}`);
  }
  let summary = 'no test report was written';
  if (existsSync(report)) {
    const r = JSON.parse(readFileSync(report, 'utf8'));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    // Suites that skip say why in their names ("… (skipped: not root)"): repeat those here.
    const reasons = new Set();
    for (const file of r.testResults ?? []) {
      for (const t of file.assertionResults ?? []) {
        const title = [...(t.ancestorTitles ?? []), t.title].find((x) => /\(skipped: /.test(x));
        if (title && t.status !== 'passed' && t.status !== 'failed') reasons.add(title);
      }
    }
    for (const title of reasons) console.log(`skipped: ${title}`);
    summary = `${r.numPassedTests} passed, ${r.numFailedTests} failed${skipped ? `, ${skipped} skipped` : ''}`;
  }
  console.log(summary);
  process.exit(code);
} else if (mode === 'bench') {
  const [name, ...args] = rest;
  const script = path.join(top, `scripts/bench-${name}.mjs`);
  if (!name || !existsSync(script)) {
    console.error(`usage: node scripts/run.mjs bench NAME   (a scripts/bench-NAME.mjs)`);
    process.exit(2);
  }
  process.exit(run(process.execPath, [...nodeArgs, script, ...args]));
} else if (mode === 'lint:deps') {
  // After the build: the rules resolve @kiln/NAME through each package's exports, which point into dist/.
  const cruise = path.join(top, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');
  process.exit(run(process.execPath, [cruise, 'packages/*/src', 'test', 'scripts', '--config', '.dependency-cruiser.cjs', ...rest]));
} else if (mode === 'build') {
  process.exit(0);
} else {
  console.error('usage: node scripts/run.mjs demo|test|bench NAME|build|lint:deps [args]');
  process.exit(2);
}
