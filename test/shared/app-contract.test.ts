// The app contract through the one install routine, with real processes: hooks, persistent data,
// several processes, honest failures, and a fleet config with a secret read from a file.
import { mkdir, readFile, readdir, realpath, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, install, isAlive, resolveSecrets, rollback, type HostConfig } from '@kiln/shared';
import { failure } from '../helpers/failure.js';
import { makeHost, type Host } from '../helpers/host.js';
import { makeKeys, pushApp } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
const keys = makeKeys();
const hosts: Host[] = [];

// Answers with its environment and what the migration left in its data directory; exits at once
// with FAIL_WITH (a bad config) after printing a line.
const SERVER = `
const http = require('node:http');
const fs = require('node:fs');
if (process.env.FAIL_WITH) { console.log('cannot start: bad DATABASE_URL ' + process.env.DATABASE_URL); process.exit(Number(process.env.FAIL_WITH)); }
http.createServer((req, res) => {
  if (req.url === '/healthz') return res.end('ok');
  const migrations = fs.existsSync('data/migrations.log') ? fs.readFileSync('data/migrations.log', 'utf8') : null;
  res.end(JSON.stringify({ version: fs.readFileSync('VERSION', 'utf8').trim(), env: process.env, migrations }));
}).listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;
const MIGRATE = `
const fs = require('node:fs');
const v = fs.readFileSync('VERSION', 'utf8').trim();
fs.appendFileSync(process.env.KILN_DATA_DIR + '/data/migrations.log', v + '\\n');
console.log('migrated to ' + v + ' as hook ' + process.env.KILN_HOOK);
`;
const web = { command: ['node', 'server.js'], port: 8080 };
const healthz = { type: 'http', path: '/healthz', timeoutMs: 8_000, intervalMs: 50 };
const hook = (command: string[], timeoutMs = 10_000) => ({ command, timeoutMs });

async function push(version: string, kilnJson: object, extra: Record<string, string> = {}) {
  const r = await pushApp({ store: s3.store, keys, version, kilnJson, extra: { 'server.js': SERVER, 'migrate.js': MIGRATE, ...extra } });
  return r;
}

beforeAll(async () => {
  s3 = await startS3();
  const base = { service: web, health: healthz, persist: ['data'], hooks: { beforeStart: hook(['node', 'migrate.js']) } };
  await push('1.0.0', base);
  await push('2.0.0', base);
  await push('3.0.0-badstart', { ...base, hooks: { beforeStart: hook(['sh', '-c', 'echo migrating; echo "relation users exists" >&2; exit 4']) } });
  await push('3.0.1-badvalidate', { ...base, hooks: { validate: hook(['sh', '-c', 'echo smoke test failed; exit 2']) } });
  await push('3.0.2-hang', { ...base, hooks: { beforeStart: hook(['sh', '-c', 'sleep 30 & echo $! > "$KILN_DATA_DIR/data/child.pid"; wait'], 700) } });
  await push('4.0.0-worker', { processes: { web: { ...web, health: healthz }, worker: { command: ['node', '-e', 'console.log("worker: no queue"); process.exit(1)'] } } });
  await push('4.0.1-workers', { processes: { web: { ...web, health: healthz }, worker: { command: ['node', '-e', 'setInterval(() => {}, 1000)'] } } });
  await push('5.0.0-exit3', { service: { command: ['sh', '-c', 'echo "fatal: config missing"; exit 3'], port: 8080 }, health: healthz });
}, 60_000);
afterAll(() => s3.close());
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

async function host(): Promise<Host> {
  const h = await makeHost({ store: s3.store, keys });
  hosts.push(h);
  return h;
}

const served = async (h: Host) => JSON.parse((await h.serving())!) as { version: string; env: Record<string, string>; migrations: string | null };
/** After a swap back the old release is restarted, not yet listening: what it serves once it does. */
const servedSoon = async (h: Host) => (await expect.poll(() => h.serving(), { timeout: 5_000 }).toBeTruthy(), served(h));

describe('hooks and persistent data', () => {
  it('a beforeStart migration writes into the persistent directory, which survives upgrades and a rollback', async () => {
    const h = await host();
    const r1 = await install({ ...h.opts(), target: { version: '1.0.0' } });
    expect(r1.hooks?.beforeStart).toMatchObject({ code: 0, tail: ['migrated to 1.0.0 as hook beforeStart'] });
    await install({ ...h.opts(), target: { version: '2.0.0' } });
    const layout = appLayout(h.root, 'web');
    expect((await served(h)).migrations).toBe('1.0.0\n2.0.0\n');
    expect((await served(h)).env.KILN_DATA_DIR).toBe(layout.data);
    // a rollback is an install of the older release: its beforeStart runs again (hooks are idempotent)
    await rollback(h.opts());
    expect(await served(h)).toMatchObject({ version: '1.0.0', migrations: '1.0.0\n2.0.0\n1.0.0\n' });
    // the release links it; the directory itself lives outside releases/
    expect((await stat(path.join(layout.data, 'data'))).isDirectory()).toBe(true);
    expect(await realpath(path.join(layout.release('1.0.0'), 'data'))).toBe(await realpath(path.join(layout.data, 'data')));
  });

  it('a failing beforeStart swaps nothing: the old release keeps serving, the error has its code and last lines', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const pid = (await h.service.status()).pid;
    const err = await failure(install({ ...h.opts(), target: { version: '3.0.0-badstart' } }));
    expect(err.code).toBe('KILN_HOOK_FAILED');
    expect(err.message).toContain('the beforeStart hook (sh -c');
    expect(err.message).toContain('exited with code 4');
    expect(err.message).toContain('relation users exists');
    expect(await h.current()).toBe('1.0.0');
    // not even restarted
    expect((await h.service.status()).pid).toBe(pid);
    expect((await h.state()).last).toMatchObject({ outcome: 'failed', error: { code: 'KILN_HOOK_FAILED' } });
  });

  it('a failing validate swaps back to the old release', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const err = await failure(install({ ...h.opts(), target: { version: '3.0.1-badvalidate' } }));
    expect(err.code).toBe('KILN_HOOK_FAILED');
    expect(err.message).toContain('smoke test failed');
    expect(await h.current()).toBe('1.0.0');
    expect((await servedSoon(h)).version).toBe('1.0.0');
  });

  it('a hook that hangs is killed at its timeout with what it started', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const t = Date.now();
    const err = await failure(install({ ...h.opts(), target: { version: '3.0.2-hang' } }));
    expect(err.code).toBe('KILN_HOOK_TIMEOUT');
    expect(err.message).toContain('killed at its timeout of 700 ms');
    expect(Date.now() - t).toBeLessThan(5_000);
    const child = Number(await readFile(path.join(appLayout(h.root, 'web').data, 'data/child.pid'), 'utf8'));
    await expect.poll(() => isAlive(child)).toBe(false);
    expect(await h.current()).toBe('1.0.0');
  });
});

describe('hooks in a bake', () => {
  it('a bake runs no hook not marked onBake; the release\'s first start on an instance of the image runs it once', async () => {
    const h = await host();
    const r = await install({ ...h.opts(), target: { version: '1.0.0' }, baking: true });
    expect(r.hooks).toBeUndefined();
    expect((await h.state()).current?.pendingHooks).toEqual(['beforeStart']);
    expect((await served(h)).migrations).toBe(null);
    // an instance booted from the image: the agent starts the installed release through the routine
    await h.service.stop();
    const first = await install({ ...h.opts(), target: { version: '1.0.0' } });
    expect(first).toMatchObject({ outcome: 'unchanged', hooks: { beforeStart: { code: 0 } } });
    expect((await h.state()).current?.pendingHooks).toBeUndefined();
    expect((await served(h)).migrations).toBe('1.0.0\n');
    // once
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    expect((await served(h)).migrations).toBe('1.0.0\n');
  });
});

describe('several processes and honest failures', () => {
  it('runs a worker beside web; status shows each', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '4.0.1-workers' } });
    const st = await h.service.status();
    expect(st.active).toBe(true);
    expect(st.processes.map((p) => [p.name, p.active])).toEqual([['web', true], ['worker', true]]);
    // a release without the worker stops it
    await install({ ...h.opts(), target: { version: '5.0.0-exit3' } }).catch(() => undefined);
    await install({ ...h.opts(), target: { version: '1.0.0' }, allowDowngrade: true });
    expect((await h.service.status()).processes.map((p) => p.name)).toEqual(['web']);
  });

  it('a worker that crashes fails the health gate, saying how it ended', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const err = await failure(install({ ...h.opts(), target: { version: '4.0.0-worker' } }));
    expect(err.code).toBe('KILN_APP_CRASHED');
    expect(err.message).toMatch(/^worker exited with code 1 \(\d+ restarts? in \d+ s\)/);
    expect(err.message).toContain('worker: no queue');
    expect(await h.current()).toBe('1.0.0');
    expect((await servedSoon(h)).version).toBe('1.0.0');
  });

  it('an app that exits with code 3 is reported as that, not as the probe\'s ECONNREFUSED', async () => {
    const h = await host();
    const t = Date.now();
    const err = await failure(install({ ...h.opts(), target: { version: '5.0.0-exit3' } }));
    expect(err.code).toBe('KILN_APP_CRASHED');
    expect(err.message).toMatch(/^web exited with code 3 \(\d+ restarts in \d+ s\); its last lines:\nfatal: config missing/);
    expect(err.message).not.toContain('ECONNREFUSED');
    // it did not wait for the 8 s health timeout
    expect(Date.now() - t).toBeLessThan(7_000);
  });
});

describe('fleet config and secrets', () => {
  async function secretFile(h: Host, mode: number): Promise<void> {
    await mkdir(path.join(h.root, 'etc/app'), { recursive: true });
    await writeFile(path.join(h.root, 'etc/app/db-password'), 's3cr3t-pa55\n', { mode });
  }
  const config = (seq: number, values: Record<string, string>): HostConfig => ({ seq, sha256: String(seq).padStart(64, '0'), values, secrets: { DB_PASSWORD: 'file:/etc/app/db-password' } });

  it('a secret from a file reaches the app only through a 0600 environment file; a config that fails is rolled back to the old one', async () => {
    const h = await host();
    await secretFile(h, 0o600);
    const resolve = (refs: Record<string, string>) => resolveSecrets(refs, { root: h.root, env: {} });
    const opts = h.opts({ resolveSecrets: resolve });
    const r = await install({ ...opts, target: { version: '1.0.0' }, config: config(1, { DATABASE_URL: 'postgres://db/one' }) });
    expect(r.config).toEqual({ seq: 1, sha256: config(1, {}).sha256 });
    expect((await served(h)).env).toMatchObject({ DATABASE_URL: 'postgres://db/one', DB_PASSWORD: 's3cr3t-pa55' });
    const layout = appLayout(h.root, 'web');
    const envFiles = await readdir(layout.run);
    expect(envFiles).toEqual(['config-1.env']);
    expect((await stat(path.join(layout.run, 'config-1.env'))).mode & 0o777).toBe(0o600);
    // nothing else on the host holds the value: not the kept config, the state, the service files
    for (const f of [path.join(layout.configs, '1.json'), layout.state, path.join(layout.appDir, 'service.json')]) {
      expect(await readFile(f, 'utf8')).not.toContain('s3cr3t-pa55');
    }

    // same release, a config that makes the app exit: rolled back to config 1
    const err = await failure(install({ ...opts, target: { version: '1.0.0' }, config: config(2, { DATABASE_URL: 'postgres://db/two', FAIL_WITH: '5' }) }));
    expect(err.code).toBe('KILN_APP_CRASHED');
    expect(err.message).toContain('cannot start: bad DATABASE_URL postgres://db/two');
    expect(err.message).not.toContain('s3cr3t-pa55');
    await expect.poll(async () => (await served(h).catch(() => undefined))?.env.DATABASE_URL, { timeout: 5_000 }).toBe('postgres://db/one');
    expect((await h.state()).current?.config?.seq).toBe(1);

    // a good config 3 for the same release is a restart with it (no download)
    const r3 = await install({ ...opts, target: { version: '1.0.0' }, config: config(3, { DATABASE_URL: 'postgres://db/three' }) });
    expect(r3).toMatchObject({ outcome: 'installed', downloaded: false, config: { seq: 3 } });
    expect((await served(h)).env.DATABASE_URL).toBe('postgres://db/three');
    // config 1 is still the previous one's; config 2 (never committed) is gone from the host
    expect((await readdir(layout.configs)).sort()).toEqual(['1.json', '3.json']);
    expect((await readdir(layout.run)).sort()).toEqual(['config-1.env', 'config-3.env']);
    // an older config is a replay
    expect((await failure(install({ ...opts, target: { version: '1.0.0' }, config: config(2, {}) }))).code).toBe('KILN_CONFIG_STALE');
  });

  it('a world-readable secret file is refused before anything is swapped', async () => {
    const h = await host();
    await secretFile(h, 0o644);
    const opts = h.opts({ resolveSecrets: (refs) => resolveSecrets(refs, { root: h.root, env: {} }) });
    const err = await failure(install({ ...opts, target: { version: '1.0.0' }, config: config(1, {}) }));
    expect(err.code).toBe('KILN_SECRET_UNRESOLVED');
    expect(err.message).toContain('DB_PASSWORD');
    expect(err.message).not.toContain('s3cr3t-pa55');
    expect(await h.current()).toBe(null);
  });
});
