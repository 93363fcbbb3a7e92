import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, install, isKilnError, readInstalledManifest, rollback, type KilnError, type ReleaseStore } from '@kiln/shared';
import { makeHost, type Host } from '../helpers/host.js';
import { STANDARD_RELEASES, leftovers, makeKeys, pushApp, pushReleases } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
const keys = makeKeys();
const hosts: Host[] = [];

beforeAll(async () => {
  s3 = await startS3();
  await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES);
});
afterAll(() => s3.close());
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

async function host(): Promise<Host> {
  const h = await makeHost({ store: s3.store, keys });
  hosts.push(h);
  return h;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isKilnError(err)) return (err as KilnError).code;
    throw err;
  }
  throw new Error('expected a KilnError, but it succeeded');
}

describe('install', () => {
  it('installs from a channel, starts the app and records how it got there', async () => {
    const h = await host();
    const r = await install({ ...h.opts(), target: { channel: 'stable' } });
    expect(r).toMatchObject({ outcome: 'installed', version: '1.0.0', previous: null, via: 'manual', downloaded: true });
    expect(await h.current()).toBe('1.0.0');
    expect(await h.serving()).toContain('1.0.0');
    const state = await h.state();
    expect(state.current).toMatchObject({ version: '1.0.0', seq: 1 });
    expect(state.channels).toEqual({ stable: 1 });
    expect(await leftovers(h.root)).toEqual([]);
    // the tree on disk is the app, with its modes
    const rel = appLayout(h.root, 'web').release('1.0.0');
    expect((await readFile(path.join(rel, 'VERSION'), 'utf8')).trim()).toBe('1.0.0');
    expect((await stat(path.join(rel, 'server.js'))).mode & 0o777).toBe(0o644);
  });

  it('is a no-op for what is installed, fast and without a download', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const t = Date.now();
    const r = await install({ ...h.opts(), target: { version: '1.0.0' } });
    expect(Date.now() - t).toBeLessThan(1_000);
    expect(r).toMatchObject({ outcome: 'unchanged', downloaded: false });
  });

  it('starts a stopped app when asked to install what is installed', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    await h.service.stop();
    expect(await h.serving()).toBeUndefined();
    const r = await install({ ...h.opts(), target: { version: '1.0.0' } });
    expect(r).toMatchObject({ outcome: 'unchanged', downloaded: false });
    expect(await h.serving()).toContain('1.0.0');
  });

  it('upgrades in place and rolls back through the same routine', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const r2 = await install({ ...h.opts(), target: { version: '2.0.0' } });
    expect(r2).toMatchObject({ outcome: 'installed', previous: '1.0.0' });
    expect(await h.serving()).toContain('2.0.0');
    const rb = await rollback(h.opts());
    expect(rb).toMatchObject({ outcome: 'rolled-back', version: '1.0.0', downloaded: false });
    expect(await h.serving()).toContain('1.0.0');
    expect((await h.state()).current).toMatchObject({ version: '1.0.0', via: 'rollback' });
  });

  it('treats the same command id twice as one install', async () => {
    const h = await host();
    await install({ ...h.opts({ commandId: 'cmd-1' }), target: { version: '1.0.0' } });
    await install({ ...h.opts(), target: { version: '2.0.0' } });
    const again = await install({ ...h.opts({ commandId: 'cmd-1' }), target: { version: '1.0.0' } });
    expect(again.outcome).toBe('unchanged');
    expect(await h.current()).toBe('2.0.0');
  });

  it('keeps current, previous and N more releases', async () => {
    for (const v of ['k1', 'k2', 'k3', 'k4', 'k5']) {
      await pushApp({ store: s3.store, keys, app: 'keep', version: v });
    }
    const hk = await makeHost({ store: s3.store, keys, app: 'keep' });
    hosts.push(hk);
    for (const v of ['k1', 'k2', 'k3', 'k4', 'k5']) await install({ ...hk.opts({ keep: 1 }), target: { version: v } });
    const layout = appLayout(hk.root, 'keep');
    expect((await readdir(layout.releases)).sort()).toEqual(['k3', 'k4', 'k5']);
    expect((await readdir(layout.meta)).sort()).toEqual(['k3.json', 'k3.stamps', 'k4.json', 'k4.stamps', 'k5.json', 'k5.stamps']);
  });

  it('refuses a lower seq than installed unless asked: KILN_SEQ_DOWNGRADE', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '2.0.0' } });
    expect(await codeOf(install({ ...h.opts(), target: { version: '1.0.0' } }))).toBe('KILN_SEQ_DOWNGRADE');
  });

  it('rebuilds a state file that does not parse, from current and the complete markers', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    await writeFile(appLayout(h.root, 'web').state, '{"schema": 1, "app": "web", "curr');
    const r = await install({ ...h.opts(), target: { version: '2.0.0' } });
    expect(r.previous).toBe('1.0.0');
    const state = await h.state();
    expect(state.rebuiltAt).toBeDefined();
    expect(state.current?.version).toBe('2.0.0');
    expect(state.previous?.version).toBe('1.0.0');
  });

  it('discards a journal that does not parse and keeps the current release', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    await writeFile(appLayout(h.root, 'web').journal, 'garbage');
    expect((await install({ ...h.opts(), target: { version: '2.0.0' } })).outcome).toBe('installed');
    expect(await leftovers(h.root)).toEqual([]);
  });

  it('a damaged local manifest escaped readInstalledManifest as a bare SyntaxError: it reads as none', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    const layout = appLayout(h.root, 'web');
    expect((await readInstalledManifest(layout, '1.0.0'))?.manifest.version).toBe('1.0.0');
    await writeFile(layout.metaFile('1.0.0'), JSON.stringify({ manifest: '{"schema": 1, "app": "we', sig: 'x' }));
    expect(await readInstalledManifest(layout, '1.0.0')).toBeUndefined();
  });

  it('installs a release already on disk without a bucket, and needs one otherwise: KILN_NOT_INSTALLED', async () => {
    const h = await host();
    await install({ ...h.opts(), target: { version: '1.0.0' } });
    await install({ ...h.opts(), target: { version: '2.0.0' } });
    const { store: _omit, ...offline } = h.opts({ allowDowngrade: true });
    expect((await install({ ...offline, target: { version: '1.0.0' } })).downloaded).toBe(false);
    expect(await codeOf(install({ ...offline, target: { version: '3.0.0' } }))).toBe('KILN_NOT_INSTALLED');
  });

  // Regression: install() read state.json before the lock and decided on that copy, so an install
  // that waited on S3 while another one finished could put an older release over a newer one.
  it('decides on the state read under the lock, not on one read while waiting on S3', async () => {
    const h = await host();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let waiting!: () => void;
    const atManifest = new Promise<void>((r) => (waiting = r));
    const slow: ReleaseStore = {
      ...s3.store,
      getManifest: async (app, version) => {
        waiting();
        await gate;
        return s3.store.getManifest(app, version);
      },
    };
    const older = install({ ...h.opts({ store: slow }), target: { version: '1.0.0' } });
    await atManifest;
    await install({ ...h.opts(), target: { version: '2.0.0' } });
    release();
    expect(await codeOf(older)).toBe('KILN_SEQ_DOWNGRADE');
    expect((await h.state()).current?.version).toBe('2.0.0');
  });

  // Regression: the stall timer was armed before the artifact request answered; a slow answer made
  // it fire with nobody listening, an uncaught error that would end an agent.
  it('waits for a slow artifact answer without a stray stall timer', async () => {
    const h = await host();
    const slow: ReleaseStore = {
      ...s3.store,
      getArtifact: async (key, signal) => {
        await new Promise((r) => setTimeout(r, 600));
        return s3.store.getArtifact(key, signal);
      },
    };
    const r = await install({ ...h.opts({ store: slow, idleTimeoutMs: 200 }), target: { version: '1.0.0' } });
    expect(r.outcome).toBe('installed');
  });
});
