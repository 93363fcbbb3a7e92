// Regression (issue 16, item 13): the fleet's shared agent credential let one host connect as
// *another* instance of its fleet and displace that instance's agent ("replaced by a newer
// connection"); while the impostor held the socket it received that instance's commands and could
// answer them with a fake success. Now each agent proves a key of its own on every connection (a
// signature over the connection's nonce), the controller pins the key at the instance's first hello,
// keeps the pin in the bucket, and refuses any other key for that id (KILN_INSTANCE_KEY_MISMATCH,
// logged at warn) without touching the live connection.
import { createPrivateKey } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { createDocStore, createLogger, createS3Client, rawPublicKey, type ReleaseRef } from '@kiln/shared';
import { startController, startFleet, type TestController } from '../helpers/controller.js';
import { makeAgent, until, type TestAgent } from '../helpers/agent.js';
import { agentKey, handReport, helloFrame, nonceOf } from '../helpers/raw-agent.js';
import { STANDARD_RELEASES, makeKeys, pushReleases } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let ctl: TestController;
let rel: Record<string, ReleaseRef>;
let fleet: { agents: TestAgent[]; credential: string };
/** everything the controllers logged */
const lines: string[] = [];
const log = createLogger({ level: 'debug', destination: { write: (l: string) => void lines.push(l) } });
const impostorKey = agentKey();

beforeAll(async () => {
  s3 = await startS3();
  rel = await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES);
  ctl = await startController({ s3, keys, log });
  fleet = await startFleet({ s3, keys, ctl, count: 1 });
  await until('web-1 on 1.0.0', async () => (await rows())[0]?.installed === '1.0.0');
}, 60_000);
afterAll(async () => {
  for (const a of fleet.agents) await a.stop();
  await ctl.close();
  await s3.close();
  for (const a of fleet.agents) await rm(a.root, { recursive: true, force: true });
});

const rows = async (): Promise<any[]> => (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances;
const identityFile = (a: TestAgent) => path.join(a.root, 'var/lib/kiln/agent/identity.key');

/** An impostor with the fleet's credential connecting as `instanceId`, saying hello with its own key (and a report of success). */
async function impostor(instanceId: string, url = ctl.agentsUrl) {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${fleet.credential}`, 'x-kiln-instance': instanceId } });
  const frames: any[] = [];
  ws.on('error', () => {});
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  const nonce = await nonceOf(ws);
  const installed = { ...rel['2.0.0']!, artifactSha256: 'a'.repeat(64), via: 'hotfix' as const, installedAt: new Date().toISOString() };
  ws.send(helloFrame({ key: impostorKey, nonce, instanceId, report: handReport(instanceId, { installed }) }));
  return { ws, frames, closed };
}

describe('an instance id is bound to the agent that first proved it', () => {
  it('the agent made its key pair on first boot, under its root, 0600; the controller pinned it and keeps it in the bucket', async () => {
    const a = fleet.agents[0]!;
    const st = await stat(identityFile(a));
    expect(st.mode & 0o777).toBe(0o600);
    const publicKey = rawPublicKey(createPrivateKey(await readFile(identityFile(a), 'utf8')));
    expect(lines.some((l) => l.includes('"instanceId":"web-1"') && l.includes('pinned the agent key of a new instance'))).toBe(true);
    const docs = createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket);
    await until('the pin is in the bucket', async () => (await docs.list('controller/instances/')).includes('controller/instances/web.json'));
    const raw = await createS3Client(s3.s3.location).send(new GetObjectCommand({ Bucket: s3.s3.location.bucket, Key: 'controller/instances/web.json' }));
    expect(JSON.parse(await raw.Body!.transformToString())).toEqual({ fleet: 'web', instances: { 'web-1': { publicKey, pinnedAt: expect.any(String) } } });
  });

  it('regression: an impostor with the fleet credential cannot take the live id web-1: refused with KILN_INSTANCE_KEY_MISMATCH and a warn line; the real agent keeps its socket and its commands', async () => {
    const from = lines.length;
    const fake = await impostor('web-1');
    const { code, reason } = await fake.closed;
    expect(code).toBe(1008);
    expect(reason).toMatch(/^KILN_INSTANCE_KEY_MISMATCH/);
    expect(fake.frames).toEqual([{ v: expect.any(Number), type: 'error', error: { code: 'KILN_INSTANCE_KEY_MISMATCH', message: expect.stringMatching(/web-1 of fleet web is pinned to the agent key SHA256:[0-9a-f]{16}/) } }]);
    const warned = lines.slice(from).map((l) => JSON.parse(l)).find((l) => l.code === 'KILN_INSTANCE_KEY_MISMATCH');
    expect(warned).toMatchObject({ level: 40, instanceId: 'web-1', fleet: 'web', pinned: expect.stringMatching(/^SHA256:/), offered: expect.stringMatching(/^SHA256:/) });
    expect(warned.pinned).not.toBe(warned.offered);
    // the live connection was never touched
    expect(lines.slice(from).some((l) => l.includes('replaces the first') || l.includes('agent disconnected'))).toBe(false);
    expect(fleet.agents[0]!.agent.connected).toBe(true);
    expect((await rows()).map((r) => [r.instanceId, r.connected, r.installed])).toEqual([['web-1', true, '1.0.0']]);

    // a deployment reaches the real agent, not the impostor
    const res = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '2.0.0' });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    await until('the deployment finished', async () => (await ctl.api('GET', `/v1/deployments/${res.body.deployment.id}`)).body.deployment.state !== 'running', 30_000);
    expect((await ctl.api('GET', `/v1/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe('succeeded');
    expect(await fleet.agents[0]!.serving()).toContain('kiln-demo 2.0.0');
    expect(fake.frames.some((f) => f.type === 'command')).toBe(false);
  });

  it('a hello recorded on one connection is refused on another (its signature covers the first connection nonce)', async () => {
    const key = agentKey();
    const first = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${fleet.credential}`, 'x-kiln-instance': 'web-replay' } });
    const nonce = await nonceOf(first);
    const recorded = helloFrame({ key, nonce, instanceId: 'web-replay', report: handReport('web-replay') });
    first.send(recorded);
    await until('web-replay admitted', async () => (await rows()).some((r) => r.instanceId === 'web-replay' && r.connected));
    first.close();
    await until('web-replay away', async () => (await rows()).some((r) => r.instanceId === 'web-replay' && !r.connected));
    const again = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${fleet.credential}`, 'x-kiln-instance': 'web-replay' } });
    const closed = new Promise<{ code: number; reason: string }>((resolve) => again.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    again.once('open', () => again.send(recorded));
    const { code, reason } = await closed;
    expect([code, reason.split(':')[0]]).toEqual([1008, 'KILN_UNAUTHORIZED']);
    expect((await rows()).find((r) => r.instanceId === 'web-replay')?.connected).toBe(false);
  });

  it('the pin survives a controller restart: the impostor is still refused while the real agent is away, and the real agent is accepted when it comes back', async () => {
    const a = fleet.agents[0]!;
    // the agent stops (its app keeps running): nothing of it is connected when the new controller starts
    await a.agent.stop();
    const port = ctl.port;
    await ctl.close();
    ctl = await startController({ s3, keys, log, port });
    const fake = await impostor('web-1');
    expect((await fake.closed).reason).toMatch(/^KILN_INSTANCE_KEY_MISMATCH/);
    expect(await rows()).toEqual([]);
    // the same root, the same key: accepted
    const back = await makeAgent({ s3, keys, root: a.root, instanceId: 'web-1', config: { controller: { url: ctl.agentsUrl, credential: fleet.credential }, port: a.port } });
    fleet.agents[0] = back;
    await back.agent.start();
    await until('web-1 is back', async () => (await rows()).some((r) => r.instanceId === 'web-1' && r.connected && r.installed === '2.0.0'));
    await sleep(200);
    expect(back.agent.connected).toBe(true);
    expect(lines.filter((l) => l.includes('"instanceId":"web-1"') && l.includes('pinned the agent key of a new instance'))).toHaveLength(1);
  });
});

describe('refusals fit in a close frame', () => {
  it('regression: a refusal naming a 63-character fleet (over the 123 bytes a close reason holds) ended the controller; now it is cut and the controller stays up', async () => {
    const name = `f${'x'.repeat(62)}`;
    const created = await ctl.api('POST', '/v1/fleets', { name, app: 'longname' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const open = (id: string) => {
      const ws = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${created.body.agentCredential}`, 'x-kiln-instance': id } });
      ws.on('error', () => {});
      return ws;
    };
    // a fleet of size 0 without a provider: 10 connections may wait for their hello
    const waiting = Array.from({ length: 10 }, (_, i) => open(`long-${i}`));
    await Promise.all(waiting.map((ws) => nonceOf(ws)));
    const extra = open('long-10');
    const closed = await new Promise<{ code: number; reason: string }>((resolve) => extra.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    expect(closed.code).toBe(1008);
    expect(closed.reason).toMatch(/^KILN_INSTANCE_LIMIT: 10 connections of fleet fx+/);
    expect(Buffer.byteLength(closed.reason)).toBeLessThanOrEqual(123);
    expect((await ctl.api('GET', '/v1/health')).status).toBe(200);
    // what the refusal advises works on a fleet without a provider too: its size raises the limit
    const grown = await ctl.api('PATCH', `/v1/fleets/${name}`, { size: 20 });
    expect([grown.status, grown.body.fleet?.size]).toEqual([200, 20]);
    const admitted = open('long-11');
    await nonceOf(admitted);
    await sleep(300); // a refusal closes at once
    expect(admitted.readyState).toBe(WebSocket.OPEN);
    admitted.close();
    for (const ws of waiting) ws.close();
  });
});

describe('a fleet deleted while its agent waits', () => {
  it('regression: a connection upgraded before its fleet was deleted was admitted and pinned at its hello; now it is refused', async () => {
    const created = await ctl.api('POST', '/v1/fleets', { name: 'gone', app: 'goneapp' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const ws = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${created.body.agentCredential}`, 'x-kiln-instance': 'gone-1' } });
    ws.on('error', () => {});
    const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    const nonce = await nonceOf(ws);
    expect((await ctl.api('DELETE', '/v1/fleets/gone')).status).toBe(200);
    ws.send(helloFrame({ key: agentKey(), nonce, instanceId: 'gone-1', report: handReport('gone-1', { app: 'goneapp' }) }));
    expect(await closed).toEqual({ code: 1008, reason: 'KILN_UNAUTHORIZED: fleet gone was deleted: its agent credential is refused' });
    expect(ctl.server.kiln.hub.get('gone-1')).toBeUndefined();
  });
});
