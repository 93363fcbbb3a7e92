import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sealImage } from '@kiln/agent';
import { appLayout, createReleaseStore, createS3Client, type MessageOf, type ReleaseRef } from '@kiln/shared';
import { agentPool, installAction, startFakeController, until, type FakeController } from '../helpers/agent.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { STANDARD_RELEASES, makeKeys, pushReleases, quietLog } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: FakeController;
const keys = makeKeys();
const agents = agentPool(() => ({ s3, keys, controller: ctl }));
const agent = agents.make;
let v1: ReleaseRef;
let v2: ReleaseRef;

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startFakeController();
  const rel = await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES);
  [v1, v2] = [rel['1.0.0']!, rel['2.0.0']!];
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});
afterEach(async () => {
  await agents.stopAll();
});

describe('agent: boot path', () => {
  it('installs the channel at boot with no controller, via boot, and serves it', async () => {
    const a = await agent({ controller: undefined });
    await a.agent.start();
    await a.agent.idle();
    expect(await a.serving()).toContain('kiln-demo 1.0.0');
    const r = await a.agent.report();
    expect(r.installed).toMatchObject({ version: '1.0.0', via: 'boot', manifestSha256: v1.manifestSha256 });
    expect(r.tree.status).toBe('ok');
    expect(r.lastError).toBeNull();
  });

  it('boots an image baked with the desired release with zero artifact downloads and reports it as baked', async () => {
    // Bake: an agent installs at boot, then the root is sealed and copied as the "image".
    const builder = await agent({ controller: undefined });
    await builder.agent.start();
    await builder.agent.idle();
    await builder.stop();
    await sealImage(builder.root, 'web', quietLog());
    const proxy = await startFaultProxy(s3.s3.location.endpoint!);
    try {
      const store = createReleaseStore(createS3Client({ ...s3.s3.location, endpoint: proxy.endpoint }), 'kiln');
      const a = await agent({ controller: undefined, root: builder.root, store });
      await a.agent.start();
      await a.agent.idle();
      expect(proxy.artifactGets).toBe(0);
      expect(await a.serving()).toContain('kiln-demo 1.0.0');
      const r = await a.agent.report();
      expect(r.image).toMatchObject({ version: '1.0.0', manifestSha256: v1.manifestSha256 });
      expect(r.installed).toMatchObject({ version: '1.0.0', via: 'baked' });
    } finally {
      await proxy.close();
    }
  });
});

describe('agent: live path', () => {
  it('says hello, applies a hotfix command with progress and a result, and reports via hotfix', async () => {
    const a = await agent();
    await a.agent.start();
    const hello = await ctl.waitFor(a.instanceId, 'hello');
    expect(hello.report.instanceId).toBe(a.instanceId);
    await a.agent.idle();
    ctl.command(a.instanceId, 'cmd-1', installAction(v2));
    const result = await ctl.waitFor(a.instanceId, 'result', (m) => m.result.commandId === 'cmd-1');
    expect(result.result).toMatchObject({ outcome: 'installed', version: '2.0.0' });
    const stages = ctl.frames.filter((f) => f.instanceId === a.instanceId && 'type' in f.msg && f.msg.type === 'progress').map((f) => (f.msg as MessageOf<'progress'>).stage);
    expect(stages).toEqual(expect.arrayContaining(['started', 'fetch', 'swap', 'health', 'commit']));
    expect(await a.serving()).toContain('kiln-demo 2.0.0');
    const report = await ctl.waitFor(a.instanceId, 'report', (m) => m.report.installed?.version === '2.0.0' && m.report.operation === null);
    expect(report.report.installed?.via).toBe('hotfix');
    // The same command id again is one install: the recorded result comes back.
    ctl.command(a.instanceId, 'cmd-1', installAction(v2));
    await until('a second result', () => ctl.frames.filter((f) => f.instanceId === a.instanceId && 'type' in f.msg && f.msg.type === 'result').length === 2);
    const layout = appLayout(a.root, 'web');
    const state = JSON.parse(await readFile(layout.state, 'utf8'));
    expect(state.commands.filter((c: { commandId?: string }) => c.commandId === 'cmd-1')).toHaveLength(1);
  });

  it('detects a modified file as drift in the tree check', async () => {
    const a = await agent();
    await a.agent.start();
    await a.agent.idle();
    const release = path.join(appLayout(a.root, 'web').current);
    await writeFile(path.join(release, 'server.js'), '// tampered\n');
    await rm(path.join(release, 'VERSION'));
    await writeFile(path.join(release, 'extra.txt'), 'x');
    ctl.command(a.instanceId, 'rep-1', { kind: 'report' });
    const rep = await ctl.waitFor(a.instanceId, 'report', (m) => m.report.tree.status === 'modified');
    expect(rep.report.tree).toMatchObject({ modified: 1, missing: 1, extra: 1 });
    expect(rep.report.tree.paths).toEqual(['M server.js', 'D VERSION', 'A extra.txt']);
  });
});
