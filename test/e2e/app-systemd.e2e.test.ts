// The app contract under a real systemd (nspawn, root only): two processes as two units, a
// beforeStart hook run as the app's user in a transient unit, a persistent directory kept across
// releases, and a secret from a 0600 file that reaches the app only through an environment file
// under /run; a failing validate swaps back; kiln logs' source (journald) has each process's output.
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMachineGroup, ensureBaseRootfs, kilnCacheDir, nspawnHostProblem, type Machine } from '@kiln/controller';
import { createConfigStore, createS3Client, publishConfig, type ReleaseRef } from '@kiln/shared';
import { CREDENTIAL, installAction, startFakeController, type FakeController } from '../helpers/agent.js';
import { freePort, makeKeys, pushApp, quietLog, tempDir } from '../helpers/release.js';
import { writeAgentInstance } from '../helpers/nspawn.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const problem = nspawnHostProblem();
const INSTANCE = 'm-app-1';
const SECRET = 'pa55-from-a-file';
// The apps compare a digest: the release itself must not hold the secret (the test looks for it everywhere).
const SECRET_SHA = createHash('sha256').update(SECRET).digest('hex');

let s3: S3Fixture;
let ctl: FakeController;
let machine: Machine;
let appPort: number;
const refs: Record<string, ReleaseRef> = {};
const group = createMachineGroup();
const keys = makeKeys();

// Answers with who it runs as, what its migration left in its data directory and whether it got the secret.
const SERVER = `
const http = require('node:http');
const fs = require('node:fs');
http.createServer((req, res) => {
  if (req.url === '/healthz') return res.end('ok');
  const log = process.env.KILN_DATA_DIR + '/data/migrations.log';
  res.end(JSON.stringify({
    version: fs.readFileSync('VERSION', 'utf8').trim(),
    uid: process.getuid(),
    migrations: fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : null,
    secretOk: require('node:crypto').createHash('sha256').update(process.env.DB_PASSWORD || '').digest('hex') === ${JSON.stringify(SECRET_SHA)},
    dbUrl: process.env.DATABASE_URL,
  }));
}).listen(Number(process.env.PORT), '127.0.0.1');
console.log('web listening');
process.on('SIGTERM', () => process.exit(0));
`;
const WORKER = `console.log('worker up, secret ' + (process.env.DB_PASSWORD ? 'present' : 'missing')); setInterval(() => {}, 1000);`;
const MIGRATE = `
const fs = require('node:fs');
fs.appendFileSync(process.env.KILN_DATA_DIR + '/data/migrations.log', fs.readFileSync('VERSION', 'utf8').trim() + ' uid ' + process.getuid() + '\\n');
console.log('migrated, secret ' + (process.env.DB_PASSWORD ? 'present' : 'missing'));
`;

function appSpec(extra: object = {}) {
  return {
    processes: {
      web: { command: ['node', 'server.js'], port: 8080, health: { type: 'http', path: '/healthz', timeoutMs: 15_000 } },
      worker: { command: ['node', 'worker.js'] },
    },
    hooks: { beforeStart: { command: ['node', 'migrate.js'], timeoutMs: 20_000 } },
    persist: ['data'],
    ...extra,
  };
}

async function prepareInstance(upper: string): Promise<void> {
  // The secret lives on the host only, readable by root alone.
  await mkdir(path.join(upper, 'etc/shop'), { recursive: true });
  await writeFile(path.join(upper, 'etc/shop/db-password'), `${SECRET}\n`, { mode: 0o600 });
  const config = { instanceId: INSTANCE, imageId: 'img-debian-base', app: 'shop', channel: 'stable', s3: s3.s3.location, controller: { url: ctl.url, credential: CREDENTIAL }, keys: [keys.publicPem], serviceManager: 'systemd', port: appPort, heartbeatMs: 1_000, backoffCapMs: 2_000 };
  await writeAgentInstance(upper, config);
}

async function get(): Promise<any> {
  const res = await fetch(`http://127.0.0.1:${appPort}/`, { signal: AbortSignal.timeout(2_000) });
  return JSON.parse(await res.text());
}

async function run(cmd: string): Promise<string> {
  const r = await machine.exec(['sh', '-c', cmd]);
  return r.stdout + r.stderr;
}

describe.skipIf(!!problem)(`the app contract under a real systemd (nspawn)${problem ? ` (skipped: ${problem})` : ''}`, () => {
  let configRef: { fleet: string; seq: number; sha256: string };

  beforeAll(async () => {
    const base = await ensureBaseRootfs({ cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), log: quietLog() });
    s3 = await startS3();
    ctl = await startFakeController();
    appPort = await freePort();
    const files = { 'server.js': SERVER, 'worker.js': WORKER, 'migrate.js': MIGRATE };
    for (const [version, spec] of [
      ['1.0.0', appSpec()],
      ['2.0.0', appSpec()],
      ['2.1.0', appSpec({ hooks: { validate: { command: ['sh', '-c', 'echo smoke test failed; exit 7'] } } })],
    ] as const) {
      const r = await pushApp({ store: s3.store, keys, app: 'shop', version, kilnJson: spec, extra: files });
      refs[version] = { version, seq: r.manifest.seq, manifestSha256: r.manifestSha256 };
    }
    const published = await publishConfig({
      store: createConfigStore(createS3Client(s3.s3.location), s3.s3.location.bucket),
      app: 'shop',
      fleet: 'web',
      set: { DATABASE_URL: 'postgres://db.internal/shop' },
      secrets: { DB_PASSWORD: 'file:/etc/shop/db-password' },
      key: keys.key,
      keys: keys.keys,
    });
    configRef = { fleet: 'web', seq: published.config.seq, sha256: published.sha256 };
    const upper = path.join(await tempDir('kiln-test-machine-'), 'upper');
    await prepareInstance(upper);
    machine = await group.boot({ image: base, upperDir: upper, name: 'kiln-app-test', binds: [{ host: REPO, container: '/opt/kiln', readOnly: true }], log: quietLog(), bootTimeoutMs: 30_000 });
    await ctl.waitFor(INSTANCE, 'hello', undefined, 60_000);
  }, 600_000);

  afterAll(async () => {
    await group.cleanupAll();
    await ctl?.close();
    await s3?.close();
  });

  it('installs two processes as two units, runs the migration as the app user, and the secret reaches the app only', async () => {
    ctl.command(INSTANCE, 'i-1', { ...installAction(refs['1.0.0']!), config: configRef }, 'shop');
    const result = await ctl.waitFor(INSTANCE, 'result', (m) => m.result.commandId === 'i-1', 60_000);
    expect(result.result, JSON.stringify(result.result)).toMatchObject({ outcome: 'installed', version: '1.0.0' });
    const body = await get();
    expect(body).toMatchObject({ version: '1.0.0', secretOk: true, dbUrl: 'postgres://db.internal/shop' });
    expect(body.uid).not.toBe(0);
    // the migration ran as the same unprivileged user, before the app started
    expect(body.migrations).toBe(`1.0.0 uid ${body.uid}\n`);
    for (const unit of ['kiln-app-shop.service', 'kiln-app-shop.worker.service']) {
      expect((await machine.systemctl('is-active', unit)).stdout.trim()).toBe('active');
    }
    // the secret: in a 0600 file under /run, never in a unit, the kept config or the state
    expect((await run('stat -c %a /run/kiln/apps/shop/config-1.env')).trim()).toBe('600');
    expect(await run(`grep -rl ${SECRET} /etc/systemd/system /var/lib/kiln || true`)).toBe('');
    // journald has each process's output (what kiln logs reads)
    expect(await run('journalctl -u kiln-app-shop.worker.service -o cat --no-pager')).toContain('worker up, secret present');
    expect(await run('journalctl -u kiln-app-shop.service -o cat --no-pager')).toContain('web listening');
  }, 120_000);

  it('keeps the persistent directory across a release; a failing validate swaps back', async () => {
    ctl.command(INSTANCE, 'i-2', installAction(refs['2.0.0']!), 'shop');
    expect((await ctl.waitFor(INSTANCE, 'result', (m) => m.result.commandId === 'i-2', 60_000)).result).toMatchObject({ outcome: 'installed' });
    const body = await get();
    expect(body).toMatchObject({ version: '2.0.0', secretOk: true });
    expect(body.migrations).toBe(`1.0.0 uid ${body.uid}\n2.0.0 uid ${body.uid}\n`);

    ctl.command(INSTANCE, 'i-3', installAction(refs['2.1.0']!), 'shop');
    const failed = (await ctl.waitFor(INSTANCE, 'result', (m) => m.result.commandId === 'i-3', 60_000)).result;
    expect(failed).toMatchObject({ outcome: 'failed', error: { code: 'KILN_HOOK_FAILED' } });
    expect(failed.error!.message).toContain('smoke test failed');
    await expect.poll(async () => (await get().catch(() => undefined))?.version, { timeout: 15_000 }).toBe('2.0.0');
    expect((await machine.systemctl('is-active', 'kiln-app-shop.worker.service')).stdout.trim()).toBe('active');
  }, 120_000);
});
