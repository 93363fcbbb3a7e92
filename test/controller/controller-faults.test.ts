// The controller under bad input and faults, against the real server and real agents: every case
// asserts the status or close code and the stable error code, that nothing changed (no pointer moved,
// no record written, the fleets as they were) and that the server goes on serving.
import { execFileSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { MAX_FRAME_BYTES, NONCE_HEADER, PROTOCOL_VERSION, createDocStore, createLogger, createS3Client, proveIdentity, readPointer, type AgentReport, type ReleaseRef } from '@kiln/shared';
import { OPERATOR, deploymentOver, fleetRows, startController, startFleet, stillServing, type TestController } from '../helpers/controller.js';
import { makeAgent, until, type TestAgent } from '../helpers/agent.js';
import { agentKey, handReport } from '../helpers/raw-agent.js';
import { STANDARD_RELEASES, makeKeys, pushApp, pushReleases, tempDir, gatedSpec } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let ctl: TestController;
/** everything the controller logged, at trace level */
const lines: string[] = [];
let web: { agents: TestAgent[]; credential: string };
/** fleet "raw" (app web): raw WebSocket clients only, so no rollout of "web" counts them */
let rawCredential: string;
let rel: Record<string, ReleaseRef>;
/** releases whose health check passes only once their gate file exists: a rollout held as long as a test wants */
let gate: string;
const cleanup: Array<() => unknown> = [];

beforeAll(async () => {
  s3 = await startS3();
  gate = path.join(await tempDir('kiln-test-gate-'), 'open');
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': { kilnJson: gatedSpec(gate) }, '3.0.0': {} });
  ctl = await startController({ s3, keys, log: createLogger({ level: 'trace', destination: { write: (l: string) => void lines.push(l) } }) });
  web = await startFleet({ s3, keys, ctl, count: 2 });
  rawCredential = (await ctl.api('POST', '/v1/fleets', { name: 'raw', app: 'web' })).body.agentCredential;
  await until('2 agents on 1.0.0', async () => (await rows('web')).filter((r) => r.connected && r.installed === '1.0.0').length === 2);
});
afterAll(async () => {
  await Promise.all(web.agents.map((a) => a.stop()));
  await ctl.close();
  await s3.close();
  await rm(path.dirname(gate), { recursive: true, force: true });
});
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

const rows = (fleet: string, c: Pick<TestController, 'api'> = ctl) => fleetRows(fleet, c);

/** What must not change under a refused request: the pointer, the controller's records, the fleets. */
async function snapshot() {
  const p = await readPointer(s3.store, 'web', 'stable', keys.keys);
  const docs = await createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket, '').list('controller/');
  return { pointer: [p.version, p.seq, p.manifestSha256], docs: docs.sort(), fleets: (await ctl.api('GET', '/v1/fleets')).body.fleets };
}

const serving = (c: Pick<TestController, 'api'> = ctl) => stillServing(c);
const finished = (id: string, c: Pick<TestController, 'api'> = ctl, timeoutMs?: number) => deploymentOver(id, c, timeoutMs);

describe('HTTP auth: checked before any work', () => {
  const routes: Array<[string, string, unknown?]> = [
    ['GET', '/v1/fleets'],
    ['GET', '/v1/fleets/web/instances'],
    ['POST', '/v1/fleets', { name: 'sneaky', app: 'web' }],
    ['POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', batch: { percent: 100 } }],
    ['POST', '/v1/deployments', 'not json {'],
    ['POST', '/v1/fleets/web/rollback', {}],
    ['GET', '/v1/releases/web'],
  ];
  const who: Array<[string, number, string, () => string | undefined]> = [
    ['no token', 401, 'KILN_UNAUTHORIZED', () => undefined],
    ['a wrong token', 401, 'KILN_UNAUTHORIZED', () => 'not-a-token-anyone-holds-0123456789'],
    ['an agent credential', 403, 'KILN_FORBIDDEN', () => web.credential],
  ];
  it.each(who)('%s gets %d %s on every operator route, and nothing moves (not even with a valid body)', async (_what, status, code, token) => {
    const before = await snapshot();
    for (const [method, url, body] of routes) {
      const res = await ctl.api(method, url, body, token() ?? '');
      expect([method, url, res.status, res.body?.error?.code]).toEqual([method, url, status, code]);
    }
    // A scheme other than Bearer is no credential either.
    const basic = await fetch(`${ctl.url}/v1/fleets`, { headers: { authorization: `Basic ${Buffer.from(`x:${OPERATOR}`).toString('base64')}` } });
    expect(basic.status).toBe(401);
    expect(await snapshot()).toEqual(before);
    await serving();
  });
});

/** The key pair of every raw client: each instance id it says hello for is pinned to it. */
const rawKey = agentKey();

/** A raw agent-side WebSocket client: records every frame, and how the socket closed; its hello is signed as an agent's. */
function rawClient(headers: Record<string, string>, url = ctl.agentsUrl) {
  const ws = new WebSocket(url, { headers });
  let nonce = '';
  ws.on('upgrade', (res) => (nonce = String(res.headers[NONCE_HEADER] ?? '')));
  const frames: any[] = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  const opened = new Promise<void>((resolve, reject) => (ws.once('open', () => resolve()), ws.once('close', () => reject(new Error('closed before open')))));
  cleanup.push(() => ws.terminate());
  const send = (v: unknown) => ws.send(typeof v === 'string' || Buffer.isBuffer(v) ? v : JSON.stringify({ v: PROTOCOL_VERSION, ...(v as object) }));
  /** the hello a real agent would send on this connection, for the report given */
  const helloOf = (report: AgentReport) => ({ type: 'hello', identity: proveIdentity(rawKey, nonce, headers['x-kiln-instance'] ?? ''), report, results: [] });
  return {
    ws,
    frames,
    closed,
    opened,
    send,
    helloOf,
    hello: (report: AgentReport) => send(helloOf(report)),
    /** sends `v` and waits for the next error frame */
    async refused(v: unknown): Promise<{ code: string; message: string }> {
      const from = frames.length;
      send(v);
      await until('an error frame', () => frames.slice(from).some((f) => f.type === 'error'), 5_000);
      return frames.slice(from).find((f) => f.type === 'error').error;
    },
  };
}
const agentHeaders = (credential: string, instance: string) => ({ authorization: `Bearer ${credential}`, 'x-kiln-instance': instance });

/** A report built by hand, as an agent would send it: installed 1.0.0, baked. */
const report = (instanceId: string, over: Partial<AgentReport> = {}): AgentReport =>
  handReport(instanceId, { installed: { ...rel['1.0.0']!, artifactSha256: 'a'.repeat(64), via: 'baked', installedAt: new Date().toISOString() }, ...over });

describe('WebSocket auth: closed with the policy code 1008 and the error code as reason', () => {
  const cases: Array<[string, string, () => Record<string, string>]> = [
    ['no credential', 'KILN_UNAUTHORIZED', () => ({ 'x-kiln-instance': 'ws-1' })],
    ['a wrong credential', 'KILN_UNAUTHORIZED', () => agentHeaders('not-the-fleet-credential-0123456789', 'ws-1')],
    ['an operator token', 'KILN_FORBIDDEN', () => agentHeaders(OPERATOR, 'ws-1')],
    ['no X-Kiln-Instance', 'KILN_REQUEST_INVALID', () => ({ authorization: `Bearer ${rawCredential}` })],
    ['an invalid X-Kiln-Instance', 'KILN_REQUEST_INVALID', () => agentHeaders(rawCredential, '../etc')],
  ];
  it.each(cases)('%s → 1008 %s; no instance appears', async (_what, code, headers) => {
    const before = await snapshot();
    const c = rawClient(headers());
    const { code: closeCode, reason } = await c.closed;
    expect(closeCode).toBe(1008);
    expect(reason.startsWith(code)).toBe(true);
    expect(await rows('raw')).toEqual([]);
    expect((await rows('web')).map((r) => r.instanceId)).toEqual(['web-1', 'web-2']);
    expect(await snapshot()).toEqual(before);
    await serving();
  });
});

describe('malformed bodies and parameters: 400 KILN_REQUEST_INVALID naming the field', () => {
  const dep = { fleet: 'web', version: '3.0.0' };
  const cases: Array<[string, string, unknown, RegExp]> = [
    ['POST', '/v1/deployments', '{"fleet": "web", ', /JSON/i],
    ['POST', '/v1/deployments', '', /body/i],
    ['POST', '/v1/deployments', [dep], /\(root\)/],
    ['POST', '/v1/deployments', { ...dep, force: true }, /force/],
    ['POST', '/v1/deployments', { ...dep, maxFailures: '2' }, /maxFailures/],
    ['POST', '/v1/deployments', { ...dep, healthTimeoutMs: 5 }, /healthTimeoutMs/],
    ['POST', '/v1/deployments', { fleet: 'web', version: 3 }, /version/],
    ['POST', '/v1/deployments', { fleet: 'web', version: '../3.0.0' }, /version/],
    ['POST', '/v1/deployments', { ...dep, fleet: 'Web_1' }, /fleet/],
    ['POST', '/v1/deployments', { ...dep, strategy: 'bake' }, /strategy/],
    ['POST', '/v1/deployments', { ...dep, batch: { percent: 0 } }, /batch/],
    ['POST', '/v1/deployments', { ...dep, batch: { percent: 101 } }, /batch/],
    ['POST', '/v1/deployments', { ...dep, batch: { count: -1 } }, /batch/],
    ['POST', '/v1/deployments', { ...dep, batch: '25%' }, /batch/],
    ['POST', '/v1/fleets', { name: 'Bad Name', app: 'web' }, /name/],
    ['POST', '/v1/fleets', { name: 'ok', app: 'web', provider: 'mainframe' }, /provider/],
    ['POST', '/v1/fleets', { name: 'ok' }, /app/],
    ['POST', '/v1/fleets/web/rollback', { batch: { percent: 0 } }, /batch/],
    ['GET', '/v1/fleets/Bad_Name', undefined, /name/],
    ['GET', '/v1/deployments?fleet=Bad_Name', undefined, /fleet/],
    ['GET', '/v1/deployments?limit=5', undefined, /limit/],
  ];
  it.each(cases)('%s %s %j', async (method, url, body, field) => {
    const before = await snapshot();
    const res = await ctl.api(method, url, body);
    expect(res.status, JSON.stringify(res.body)).toBe(400);
    expect(res.body.error.code).toBe('KILN_REQUEST_INVALID');
    expect(res.body.error.message).toMatch(field);
    expect(await snapshot()).toEqual(before);
    await serving();
  });
});

describe('unknown things: 404 before anything moves', () => {
  const cases: Array<[string, string, unknown, string]> = [
    ['POST', '/v1/deployments', { fleet: 'nope', version: '3.0.0' }, 'KILN_FLEET_NOT_FOUND'],
    ['POST', '/v1/deployments', { fleet: 'web', version: '9.9.9' }, 'KILN_RELEASE_NOT_FOUND'],
    // twice: the failed attempt above must not leave the fleet marked busy
    ['POST', '/v1/deployments', { fleet: 'web', version: '9.9.9' }, 'KILN_RELEASE_NOT_FOUND'],
    ['GET', '/v1/fleets/nope', undefined, 'KILN_FLEET_NOT_FOUND'],
    ['GET', '/v1/fleets/nope/drift', undefined, 'KILN_FLEET_NOT_FOUND'],
    ['POST', '/v1/fleets/nope/rollback', {}, 'KILN_FLEET_NOT_FOUND'],
    ['GET', '/v1/deployments?fleet=nope', undefined, 'KILN_FLEET_NOT_FOUND'],
    ['GET', '/v1/deployments/d-abc123-0a1b2c', undefined, 'KILN_DEPLOYMENT_NOT_FOUND'],
    ['GET', '/v1/deployments/whatever', undefined, 'KILN_DEPLOYMENT_NOT_FOUND'],
    ['POST', '/v1/deployments/d-abc123-0a1b2c/cancel', undefined, 'KILN_DEPLOYMENT_NOT_FOUND'],
    ['GET', '/v1/releases/web/9.9.9', undefined, 'KILN_RELEASE_NOT_FOUND'],
  ];
  it.each(cases)('%s %s %j → %s', async (method, url, body, code) => {
    const before = await snapshot();
    const res = await ctl.api(method, url, body);
    expect([res.status, res.body.error.code]).toEqual([404, code]);
    expect(await snapshot()).toEqual(before);
    await serving();
  });

  it('an unknown route is a 404 that says so', async () => {
    const res = await ctl.api('GET', '/v1/nothing-here');
    expect(res.status).toBe(404);
    expect(res.body.error.message).toMatch(/no route GET \/v1\/nothing-here/);
  });
});

describe('conflicts: 409', () => {
  it('a second deployment on a busy fleet is KILN_FLEET_BUSY and a second fleet of the same name KILN_FLEET_EXISTS; neither changes anything', async () => {
    // two at once: one wins
    const both = await Promise.all([1, 2].map(() => ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '2.0.0', batch: { percent: 100 }, healthTimeoutMs: 40_000 })));
    expect(both.map((r) => r.status).sort()).toEqual([201, 409]);
    const id = both.find((r) => r.status === 201)!.body.deployment.id;
    await until('both agents at the health gate', async () => (await rows('web')).filter((r) => r.operation === 'install 2.0.0 at health').length === 2);
    const before = await snapshot();
    expect(before.pointer[0]).toBe('2.0.0'); // the first deployment moved it
    for (const version of ['3.0.0', '1.0.0', '9.9.9']) {
      const again = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version });
      expect([again.status, again.body.error.code]).toEqual([409, 'KILN_FLEET_BUSY']);
      expect(again.body.error.message).toContain(id);
    }
    const dup = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'other', channel: 'beta' });
    expect([dup.status, dup.body.error.code, dup.body.agentCredential]).toEqual([409, 'KILN_FLEET_EXISTS', undefined]);
    expect(await snapshot()).toEqual(before);
    expect((await ctl.api('GET', '/v1/deployments?fleet=web')).body.deployments.map((d: any) => d.id)).toEqual([id]);
    await serving();

    await writeFile(gate, '');
    const d = await finished(id);
    expect(d.state, d.verdict).toBe('succeeded');
    // the fleet's credential still works: its agents were never refused
    expect((await rows('web')).map((r) => [r.instanceId, r.connected, r.installed])).toEqual([
      ['web-1', true, '2.0.0'],
      ['web-2', true, '2.0.0'],
    ]);
  });
});

describe('a rollback with nothing to go back to', () => {
  it('is 409 KILN_NO_PREVIOUS and changes nothing', async () => {
    const before = await snapshot();
    const res = await ctl.api('POST', '/v1/fleets/raw/rollback', {});
    expect([res.status, res.body.error.code]).toEqual([409, 'KILN_NO_PREVIOUS']);
    expect(await snapshot()).toEqual(before);
  });
});

describe('a deployment that has finished', () => {
  it('regression: no longer holds its fleet busy while its last record write is still on the way', async () => {
    const s3f = await startS3();
    cleanup.push(() => s3f.close());
    await pushReleases({ store: s3f.store, keys }, { ...STANDARD_RELEASES, '3.0.0': {} });
    // a bucket slow to take deployment records: the verdict is in memory well before it is written
    const client = createS3Client(s3f.s3.location);
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'PutObjectCommand' && String((args.input as { Key?: string }).Key).includes('controller/deployments/')) await sleep(250);
        return next(args);
      },
      { step: 'initialize' },
    );
    const c = await startController({ s3: s3f, keys, client });
    cleanup.push(() => c.close());
    const fleet = await startFleet({ s3: s3f, keys, ctl: c, name: 'again', count: 1 });
    cleanup.push(() => fleet.agents[0]!.stop());
    await until('again-1 on 1.0.0', async () => (await rows('again', c))[0]?.installed === '1.0.0');
    const first = await c.api('POST', '/v1/deployments', { fleet: 'again', version: '2.0.0' });
    expect((await finished(first.body.deployment.id, c)).state).toBe('succeeded');
    const next = await c.api('POST', '/v1/deployments', { fleet: 'again', version: '3.0.0' });
    expect(next.status, JSON.stringify(next.body)).toBe(201);
    expect((await finished(next.body.deployment.id, c)).state).toBe('succeeded');
  });
});

describe('frames from agents', () => {
  it('a frame over 1 MiB, non-JSON, an unknown type, a wrong version or shape, a controller frame: an error frame each, the socket stays, the view is untouched', async () => {
    const c = rawClient(agentHeaders(rawCredential, 'raw-frames'));
    await c.opened;
    c.hello(report('raw-frames'));
    await until('the hello is in the view', async () => (await rows('raw'))[0]?.installed === '1.0.0');
    const view = await rows('raw');
    const bad: Array<[unknown, string]> = [
      [JSON.stringify({ v: 1, type: 'report', pad: 'x'.repeat(MAX_FRAME_BYTES + 1) }), 'KILN_FRAME_TOO_LARGE'],
      ['{"type": "report", ', 'KILN_FRAME_INVALID'],
      [Buffer.from([0xff, 0x00, 0x13]), 'KILN_FRAME_INVALID'],
      ['[1, 2]', 'KILN_FRAME_INVALID'],
      [{ type: 'reboot' }, 'KILN_FRAME_INVALID'],
      [{ v: PROTOCOL_VERSION + 1, type: 'report', report: report('raw-frames') }, 'KILN_PROTOCOL_VERSION'],
      [{ type: 'report', report: { ...report('raw-frames'), installed: { version: '../x' } } }, 'KILN_FRAME_INVALID'],
      [{ type: 'command', id: 'c1', instanceId: 'raw-frames', app: 'web', action: { kind: 'report' } }, 'KILN_FRAME_INVALID'],
    ];
    for (const [frame, code] of bad) expect((await c.refused(frame)).code).toBe(code);
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    expect((await rows('raw')).map((r) => ({ ...r, lastSeen: 0 }))).toEqual(view.map((r) => ({ ...r, lastSeen: 0 })));
    await serving();
    // still connected and listened to
    c.send({ type: 'report', report: report('raw-frames', { installed: null }) });
    await until('the good report is in the view', async () => (await rows('raw'))[0]?.installed === null);
  });

  it('a report for another instance or another app is refused with KILN_FORBIDDEN; neither view changes', async () => {
    const c = rawClient(agentHeaders(rawCredential, 'raw-a'));
    await c.opened;
    expect((await c.refused(c.helloOf(report('raw-b')))).code).toBe('KILN_FORBIDDEN');
    // nothing is recorded before a hello is admitted: neither raw-a nor raw-b
    expect((await rows('raw')).map((r) => r.instanceId)).not.toContain('raw-a');
    expect((await c.refused({ type: 'report', report: report('raw-a') })).code).toBe('KILN_FRAME_INVALID');
    c.hello(report('raw-a', { installed: null }));
    await until('raw-a admitted', async () => (await rows('raw')).some((r) => r.instanceId === 'raw-a'));
    expect((await c.refused({ type: 'report', report: report('web-1') })).code).toBe('KILN_FORBIDDEN');
    expect((await c.refused({ type: 'report', report: report('raw-a', { app: 'api' }) })).code).toBe('KILN_FORBIDDEN');
    const raw = await rows('raw');
    expect(raw.map((r) => r.instanceId)).not.toContain('raw-b');
    expect(raw.find((r) => r.instanceId === 'raw-a')).toMatchObject({ imageId: 'img-raw', installed: null });
    expect((await rows('web')).map((r) => [r.instanceId, r.imageId, r.installed])).toEqual([
      ['web-1', 'img-test', '2.0.0'],
      ['web-2', 'img-test', '2.0.0'],
    ]);
    await serving();
  });

  it('regression: an agent credential of one fleet cannot take over an instance id of another fleet', async () => {
    const c = rawClient(agentHeaders(rawCredential, 'web-1'));
    const { code, reason } = await c.closed;
    expect(code).toBe(1008);
    expect(reason.startsWith('KILN_FORBIDDEN')).toBe(true);
    expect((await rows('web')).map((r) => [r.instanceId, r.connected])).toEqual([
      ['web-1', true],
      ['web-2', true],
    ]);
    expect((await rows('raw')).map((r) => r.instanceId)).not.toContain('web-1');
    expect(web.agents[0]!.agent.connected).toBe(true);
  });

  it('a second connection for the same instance replaces the first: closed with 4000, logged', async () => {
    const first = rawClient(agentHeaders(rawCredential, 'raw-dup'));
    await first.opened;
    first.hello(report('raw-dup'));
    await until('raw-dup admitted', async () => (await rows('raw')).some((r) => r.instanceId === 'raw-dup' && r.connected));
    const second = rawClient(agentHeaders(rawCredential, 'raw-dup'));
    await second.opened;
    // replaced once the second connection's hello (the same agent key) is admitted, not before
    second.hello(report('raw-dup', { imageId: 'img-second' }));
    expect((await first.closed).code).toBe(4000);
    expect(lines.some((l) => l.includes('"instanceId":"raw-dup"') && l.includes('replaces the first'))).toBe(true);
    await until('the second connection is the view', async () => (await rows('raw')).find((r) => r.instanceId === 'raw-dup')?.imageId === 'img-second');
    expect((await rows('raw')).find((r) => r.instanceId === 'raw-dup')?.connected).toBe(true);
    second.ws.close();
    await until('disconnected', async () => (await rows('raw')).find((r) => r.instanceId === 'raw-dup')?.connected === false);
  });
});

describe('an agent that never answers', () => {
  it('its batch times out with KILN_AGENT_TIMEOUT and counts as a failure; with maxFailures 0 the real agents of the batch are rolled back', async () => {
    const silent = rawClient(agentHeaders(web.credential, 'web-silent'));
    await silent.opened;
    silent.hello(report('web-silent', { installed: { ...rel['2.0.0']!, artifactSha256: 'a'.repeat(64), via: 'hotfix', installedAt: new Date().toISOString() } }));
    await until('the silent agent is in the view', async () => (await rows('web')).some((r) => r.instanceId === 'web-silent' && r.installed === '2.0.0'));
    const res = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', batch: { percent: 100 }, maxFailures: 0, healthTimeoutMs: 8_000 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const d = await finished(res.body.deployment.id);
    expect(d.state).toBe('failed');
    expect(d.error.code).toBe('KILN_DEPLOY_FAILED');
    expect(d.error.message).toMatch(/^1 instance\(s\) failed/);
    expect(d.instances['web-silent']).toMatchObject({ step: 'rollback-failed', error: { code: 'KILN_AGENT_TIMEOUT' } });
    expect([d.instances['web-1'].step, d.instances['web-2'].step]).toEqual(['rolled-back', 'rolled-back']);
    // it was asked, and ignored it
    expect(silent.frames.some((f) => f.type === 'command' && f.action.kind === 'install' && f.action.version === '3.0.0')).toBe(true);
    for (const a of web.agents) expect(await a.serving()).toContain('kiln-demo 2.0.0');
    expect((await readPointer(s3.store, 'web', 'stable', keys.keys)).manifestSha256).toBe(rel['2.0.0']!.manifestSha256);
    expect((await ctl.api('GET', '/v1/fleets/web')).body.fleet.desired.version).toBe('2.0.0');
    await serving();
  }, 60_000);
});

/** Operator API calls over https, trusting `ca`. */
function httpsApi(base: string, ca: string): TestController['api'] {
  return (method, p, body, token = OPERATOR) =>
    new Promise((resolve, reject) => {
      const headers = { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) };
      const req = request(base + p, { method, ca, headers }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : undefined }));
      });
      req.on('error', reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
}

describe('TLS', () => {
  it('serves the API over https and agents over wss, with the private CA the agent config names', async () => {
    const dir = await tempDir('kiln-test-tls-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const [certFile, keyFile] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
    const [cert, key] = [await readFile(certFile, 'utf8'), await readFile(keyFile, 'utf8')];
    const s3t = await startS3();
    cleanup.push(() => s3t.close());
    await pushApp({ store: s3t.store, keys, version: '1.0.0', channel: 'stable' });
    const { port, url, agentsUrl, close } = await startController({ s3: s3t, keys, https: { cert, key } });
    cleanup.push(close);
    const api = httpsApi(url, cert);
    const created = await api('POST', '/v1/fleets', { name: 'tls', app: 'web' });
    expect(created.status).toBe(201);
    const a = await makeAgent({ s3: s3t, keys, instanceId: 'tls-1', config: { controller: { url: agentsUrl, credential: created.body.agentCredential, ca: '/etc/kiln/controller-ca.pem' } } });
    cleanup.push(() => a.stop());
    await writeFile(path.join(a.root, 'etc/kiln/controller-ca.pem'), cert);
    await a.agent.start();
    await until('tls-1 connected over wss', async () => (await rows('tls', { api }))[0]?.installed === '1.0.0');
    expect((await rows('tls', { api }))[0]).toMatchObject({ instanceId: 'tls-1', connected: true });
    // plain http on the TLS port gets no answer, and a client that does not trust the CA gets no connection
    expect((await fetch(`http://127.0.0.1:${port}/v1/health`).catch(() => undefined))?.status).toBeUndefined();
    const untrusting = rawClient(agentHeaders(created.body.agentCredential, 'tls-2'), agentsUrl);
    await expect(untrusting.opened).rejects.toThrow();
    expect((await rows('tls', { api })).map((r) => r.instanceId)).toEqual(['tls-1']);
  });
});

describe('secrets stay out of the log', () => {
  it('neither the operator token nor an agent credential appears in the controller log, at trace level', async () => {
    // on top of everything above: refused and accepted calls and connections of each kind
    await ctl.api('GET', '/v1/fleets');
    await ctl.api('GET', '/v1/fleets', undefined, web.credential);
    await ctl.api('POST', '/v1/deployments', '{bad', OPERATOR);
    await rawClient(agentHeaders(OPERATOR, 'sec-1')).closed;
    const c = rawClient(agentHeaders(rawCredential, 'sec-2'));
    await c.opened;
    c.hello(report('sec-2'));
    expect((await c.refused('nope')).code).toBe('KILN_FRAME_INVALID');
    const text = lines.join('');
    for (const said of ['agent connected', 'refused an agent connection', 'refused a frame from an agent', 'deployment created']) expect(text).toContain(said);
    for (const secret of [OPERATOR, web.credential, rawCredential, 'not-the-fleet-credential-0123456789', 'not-a-token-anyone-holds-0123456789']) {
      expect(text.includes(secret), `the log holds ${secret.slice(0, 6)}…`).toBe(false);
    }
  });
});
