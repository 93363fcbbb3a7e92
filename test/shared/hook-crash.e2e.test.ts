// SIGKILL of the installing process (the real CLI) while a beforeStart hook runs: recovery ends the
// hook's whole process group, leaves the old release current and serving, and the next install works.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, isAlive } from '@kiln/shared';
import { kiln, startKiln } from '../helpers/cli.js';
import { makeHost, type Host } from '../helpers/host.js';
import { leftovers, makeKeys, pushApp, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let pubFile: string;
const keys = makeKeys();
const hosts: Host[] = [];
const env = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };
const service = { command: ['node', 'server.js'], port: 8080 };
const health = { type: 'http', path: '/healthz', timeoutMs: 8_000 };

beforeAll(async () => {
  s3 = await startS3();
  pubFile = path.join(await tempDir(), 'release.pub');
  await writeFile(pubFile, keys.publicPem);
  await pushApp({ store: s3.store, keys, version: '1.0.0', kilnJson: { service, health, persist: ['data'] } });
  // A migration that takes long and leaves a child: both must end with the killed install.
  const slow = ['sh', '-c', 'sleep 60 & echo $! > "$KILN_DATA_DIR/data/child.pid"; echo $$ > "$KILN_DATA_DIR/data/hook.pid"; wait'];
  await pushApp({ store: s3.store, keys, version: '2.0.0', kilnJson: { service, health, persist: ['data'], hooks: { beforeStart: { command: slow, timeoutMs: 120_000 } } } });
  await pushApp({ store: s3.store, keys, version: '2.0.1', kilnJson: { service, health, persist: ['data'], hooks: { beforeStart: { command: ['true'] } } } });
}, 60_000);
afterAll(() => s3.close());
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

const args = (h: Host, version: string) => ['host', 'install', 'web', '--version', version, '--root', h.root, '--port', String(h.port), '--bucket', 'kiln', '--s3-endpoint', s3.s3.location.endpoint!, '--trust', pubFile];

describe('SIGKILL during a hook', () => {
  it('recovery ends the hook and its children and keeps the old release', async () => {
    const h = await makeHost({ store: s3.store, keys });
    hosts.push(h);
    expect((await kiln(args(h, '1.0.0'), { env })).code).toBe(0);
    const data = path.join(appLayout(h.root, 'web').data, 'data');
    const child = startKiln(args(h, '2.0.0'), { env });
    const pidOf = async (f: string) => Number(await readFile(path.join(data, f), 'utf8').catch(() => '')) || undefined;
    await expect.poll(() => pidOf('hook.pid'), { timeout: 15_000 }).toBeGreaterThan(0);
    const [hookPid, childPid] = [(await pidOf('hook.pid'))!, (await pidOf('child.pid'))!];
    // the journal names the step and the hook's process group (written just after the hook started)
    const journal = async () => JSON.parse(await readFile(appLayout(h.root, 'web').journal, 'utf8'));
    await expect.poll(journal).toMatchObject({ step: 'before-start', hook: { pid: hookPid } });
    child.kill('SIGKILL');
    await new Promise((r) => child.on('close', r));
    // the hook outlives the installer (its own process group) until recovery
    expect(isAlive(hookPid)).toBe(true);

    const rec = await kiln(['host', 'recover', 'web', '--root', h.root, '--json']);
    expect(rec.code, rec.stderr).toBe(0);
    expect(JSON.parse(rec.stdout).interrupted).toMatchObject({ version: '2.0.0', outcome: 'interrupted' });
    await expect.poll(() => isAlive(hookPid) || isAlive(childPid)).toBe(false);
    expect(await h.current()).toBe('1.0.0');
    expect(await h.serving()).toContain('1.0.0');
    expect(await leftovers(h.root)).toEqual([]);

    const again = await kiln(args(h, '2.0.1'), { env });
    expect(again.code, again.stderr).toBe(0);
    expect(await h.serving()).toContain('2.0.1');
  });
});
