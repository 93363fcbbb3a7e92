// Regression tests for agent bugs found in review: each test is named after the bug it pins.
import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { createAgent, sealImage } from '@kiln/agent';
import { AgentReport, appLayout, createProcessSupervisor, type ReleaseRef, type ServiceManager } from '@kiln/shared';
import { CREDENTIAL, agentPool, installAction, startFakeController, until, writeAgentConfig, type FakeController } from '../helpers/agent.js';
import { makeKeys, pushReleases, quietLog, tempDir, gatedSpec } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: FakeController;
const keys = makeKeys();
const agents = agentPool(() => ({ s3, keys, controller: ctl }));
const booted = agents.booted;
let rel: Record<string, ReleaseRef>;
/** 3.0.0's health check passes only once this file exists: an install held at its health step */
let gate: string;
const openGate = () => writeFile(gate, '');
const install = (version: string) => installAction(rel[version]!);

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startFakeController();
  gate = path.join(await tempDir('kiln-test-gate-'), 'open');
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '3.0.0': { kilnJson: gatedSpec(gate) }, '4.0.0': {} });
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});
afterEach(async () => {
  await rm(gate, { force: true });
  await agents.stopAll();
});

async function resultOf(instanceId: string, commandId: string, c = ctl, timeoutMs?: number) {
  return (await c.waitFor(instanceId, 'result', (m) => m.result.commandId === commandId, timeoutMs)).result;
}

describe('agent review: commands are never lost', () => {
  it('stop() while a command runs kept the waiting commands out of the inbox: they were lost across a restart', async () => {
    const a = await booted();
    ctl.command(a.instanceId, 'stop-a', install('3.0.0'));
    await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'stop-a' && m.stage === 'health');
    ctl.command(a.instanceId, 'stop-b', install('4.0.0'));
    await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'stop-b' && m.stage === 'queued');
    const stopping = a.agent.stop();
    await openGate();
    await stopping;
    const inbox = JSON.parse(await readFile(path.join(a.root, 'var/lib/kiln/agent/inbox.json'), 'utf8')) as Array<{ id: string }>;
    expect(inbox.map((c) => c.id)).toEqual(['stop-b']);
    // The same instance restarts: the waiting command runs.
    const b = await agents.make({ root: a.root, instanceId: a.instanceId, config: { port: a.port } });
    await b.agent.start();
    expect(await resultOf(a.instanceId, 'stop-b')).toMatchObject({ outcome: 'installed', version: '4.0.0' });
  });

  it('a command that failed before the install lock while the controller was away was missing from the next hello', async () => {
    const first = await startFakeController();
    const a = await booted({ controller: first });
    first.command(a.instanceId, 'away-a', install('3.0.0'));
    await first.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'away-a' && m.stage === 'health');
    // A release the bucket does not hold: refused before the routine takes its lock, so state.json never records it.
    first.command(a.instanceId, 'away-b', { kind: 'install', version: '9.9.9', seq: 999, manifestSha256: 'f'.repeat(64) });
    await first.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'away-b' && m.stage === 'queued');
    await first.close();
    await until('the agent notices', () => !a.agent.connected, 5_000);
    await openGate();
    await a.agent.idle();
    // The agent's config names the first one's address: the controller comes back where it was.
    const second = await startFakeController({ port: first.port });
    try {
      const hello = await second.waitFor(a.instanceId, 'hello', undefined, 5_000);
      expect(hello.results).toContainEqual(expect.objectContaining({ commandId: 'away-a', outcome: 'installed' }));
      expect(hello.results).toContainEqual(expect.objectContaining({ commandId: 'away-b', outcome: 'failed' }));
    } finally {
      await second.close();
    }
  });

  it('a tree check that hit a file vanishing under it threw: a report command got no result', async () => {
    const a = await booted();
    const file = path.join(appLayout(a.root, 'web').current, 'VERSION');
    // Another process moves a manifest file away and back as fast as it can.
    const flicker = spawn(process.execPath, ['-e', `const fs = require('fs'); const f = ${JSON.stringify(file)}; for (;;) { try { fs.renameSync(f, f + '.x'); fs.renameSync(f + '.x', f); } catch {} }`], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 40; i++) {
        ctl.command(a.instanceId, `flicker-${i}`, { kind: 'report' });
        expect(await resultOf(a.instanceId, `flicker-${i}`, ctl, 5_000)).toMatchObject({ outcome: 'reported' });
      }
    } finally {
      flicker.kill('SIGKILL');
    }
  });
});

describe('agent review: the report tells the truth', () => {
  it('queued counted boot, poll and tree jobs too, not only the commands waiting', async () => {
    const a = await booted({ config: { treeCheckIntervalMs: 1_000 } });
    ctl.command(a.instanceId, 'q-held', install('3.0.0'));
    await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'q-held' && m.stage === 'health');
    await sleep(1_500); // a tree check comes due and waits behind the install
    expect((await a.agent.report()).queued).toBe(0);
    await openGate();
    await a.agent.idle();
  });

  it('an image marker of another app, or with a version that is no version name, was reported as the baked release', async () => {
    for (const release of [
      { app: 'api', version: '1.0.0' },
      { app: 'web', version: '1.0 beta' },
    ]) {
      const root = await tempDir('kiln-test-agent-');
      await mkdir(path.join(root, 'etc/kiln'), { recursive: true });
      const marker = { schema: 1, app: release.app, release: { version: release.version, seq: 1, manifestSha256: rel['1.0.0']!.manifestSha256 }, bakedAt: new Date().toISOString() };
      await writeFile(path.join(root, 'etc/kiln/image.json'), JSON.stringify(marker));
      const a = await booted({ root, controller: undefined });
      const r = await a.agent.report();
      expect(r.image).toBeNull();
      expect(r.lastError?.code).toBe('KILN_STATE_INVALID');
      expect(AgentReport.safeParse(r).success).toBe(true);
    }
  });

  it('an image booted with its baked release reported its tree unchecked until the periodic check', async () => {
    const builder = await booted({ controller: undefined });
    await builder.stop();
    await sealImage(builder.root, 'web', quietLog());
    const a = await booted({ controller: undefined, root: builder.root });
    const r = await a.agent.report();
    expect(r.installed).toMatchObject({ version: '1.0.0', via: 'baked' });
    expect(r.tree.status).toBe('ok');
  });
});

describe('agent review: the connection', () => {
  it('the controller CA named in the config (controller.ca) was ignored: a wss:// controller with a private CA was unreachable', async () => {
    const dir = await tempDir('kiln-test-tls-');
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const cert = await readFile(path.join(dir, 'cert.pem'));
    const server = createServer({ key: await readFile(path.join(dir, 'key.pem')), cert });
    const wss = new WebSocketServer({ server });
    const hellos: string[] = [];
    wss.on('connection', (ws: WebSocket) => ws.on('message', (data) => hellos.push(JSON.parse(data.toString()).type)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const root = await tempDir('kiln-test-agent-');
      await mkdir(path.join(root, 'etc/kiln/ssl'), { recursive: true });
      await writeFile(path.join(root, 'etc/kiln/ssl/controller-ca.pem'), cert);
      await booted({ root, config: { controller: { url: `wss://127.0.0.1:${port}/agents`, credential: CREDENTIAL, ca: '/etc/kiln/ssl/controller-ca.pem' } } });
      await until('a hello over TLS', () => hellos.includes('hello'), 5_000);
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('an invalid frame reset the reconnect backoff: a controller that answers garbage and hangs up was redialled every half second', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => wss.once('listening', resolve));
    const { port } = wss.address() as AddressInfo;
    let connections = 0;
    wss.on('connection', (ws: WebSocket) => {
      connections++;
      ws.send('not a frame', () => ws.close(1011, 'speaks another protocol'));
    });
    try {
      await booted({ config: { backoffCapMs: 8_000, controller: { url: `ws://127.0.0.1:${port}/agents`, credential: CREDENTIAL } } });
      await until('connected once', () => connections >= 1, 5_000);
      await sleep(3_000);
      // with the backoff growing (0.25–0.5 s, 0.5–1 s, 1–2 s, 2–4 s) at most 4 more attempts fit in 3 s
      expect(connections).toBeLessThanOrEqual(5);
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    }
  });
});

describe('agent review: stop()', () => {
  it('stop() resolved while a report was still being written: the report file came back after the root was sealed or removed', async () => {
    const { root, config, port } = await writeAgentConfig({ s3, keys });
    const log = quietLog();
    const inner = createProcessSupervisor({ appDir: appLayout(root, 'web').appDir, log, env: { PORT: String(port) } });
    // A slow service status makes every report take a while to build.
    const service: ServiceManager = { ...inner, status: async () => (await sleep(150), inner.status()) };
    const agent = createAgent({ root, config, log, service });
    await agent.start();
    await agent.idle();
    expect((await agent.report()).installed?.version).toBe('1.0.0');
    await agent.stop();
    await inner.stop();
    const agentDir = path.join(root, 'var/lib/kiln/agent');
    await rm(agentDir, { recursive: true, force: true });
    await sleep(1_000);
    await expect(stat(agentDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
