// The controller's side of log streams (GET /v1/fleets/:name/logs over the agents' WebSocket), with
// hand-made agents on real sockets: what it asks, what it streams, an agent too old to be asked, one
// that writes into another's stream, a follow the client leaves (the agent is told to stop), and an
// agent that goes away mid-stream.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { AGENT_VERSION, PROTOCOL_VERSION, createLogger } from '@kiln/shared';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { until } from '../helpers/agent.js';
import { agentKey, handReport, helloFrame, nonceOf } from '../helpers/raw-agent.js';
import { makeKeys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: TestController;
let credential: string;

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startController({ s3, keys: makeKeys(), log: createLogger({ level: 'silent' }) });
  credential = (await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', channel: 'stable' })).body.agentCredential;
}, 30_000);
afterAll(async () => {
  await ctl?.close();
  await s3?.close();
});

/** A hand-made agent of fleet web reporting `agentVersion`; records every frame the controller sends it. */
async function rawAgent(instanceId: string, agentVersion: string) {
  const ws = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${credential}`, 'x-kiln-instance': instanceId } });
  const frames: any[] = [];
  ws.on('error', () => {});
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const nonce = await nonceOf(ws);
  ws.send(helloFrame({ key: agentKey(), nonce, instanceId, report: handReport(instanceId, { agentVersion }) }));
  await until(`${instanceId} connected`, () => ctl.server.kiln.hub.get(instanceId)?.connected === true);
  const send = (f: object) => ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...f }));
  return { ws, frames, send, request: () => frames.find((f) => f.type === 'log-request') };
}

/** GETs the logs route and collects its NDJSON items as they come; `stop` leaves the follow. */
function readLogs(query: string) {
  const ac = new AbortController();
  const items: any[] = [];
  const done = (async () => {
    const res = await fetch(`${ctl.url}/v1/fleets/web/logs?${query}`, { headers: { authorization: `Bearer ${OPERATOR}` }, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/x-ndjson/);
    let held = '';
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body!) {
        const parts = (held + decoder.decode(chunk as Uint8Array, { stream: true })).split('\n');
        held = parts.pop()!;
        items.push(...parts.map((p) => JSON.parse(p)));
      }
    } catch (err) {
      if ((err as Error).name !== 'AbortError') throw err;
    }
  })();
  return { items, done, stop: () => ac.abort() };
}

describe('GET /v1/fleets/:name/logs with agents', () => {
  it('asks each connected agent, streams its lines, refuses an agent older than 0.3.0, ignores lines for another\'s stream, and stops the follow when the client leaves', async () => {
    const old = await rawAgent('web-old', '0.2.0');
    const now = await rawAgent('web-new', AGENT_VERSION);
    const r = readLogs('follow=true&lines=3&process=web');
    await until('the log request reached web-new', () => !!now.request());
    const req = now.request();
    expect(req).toEqual({ v: PROTOCOL_VERSION, type: 'log-request', id: expect.stringMatching(/^l-/), process: 'web', lines: 3, follow: true });
    expect(old.request()).toBeUndefined();
    now.send({ type: 'log-start', id: req.id, processes: ['web'] });
    now.send({ type: 'log-lines', id: req.id, process: 'web', lines: ['one', 'two'] });
    // another connection of the fleet cannot write into web-new's stream
    old.send({ type: 'log-lines', id: req.id, process: 'web', lines: ['forged'] });
    now.send({ type: 'log-lines', id: req.id, process: 'web', lines: ['three'] });
    await until('three lines streamed', () => r.items.filter((i) => i.line).length === 3);
    expect(r.items).toEqual([
      { instance: 'web-old', error: { code: 'KILN_PROTOCOL_VERSION', message: expect.stringContaining('version 0.2.0, which serves no logs') } },
      { instance: 'web-new', process: 'web', line: 'one' },
      { instance: 'web-new', process: 'web', line: 'two' },
      { instance: 'web-new', process: 'web', line: 'three' },
    ]);
    r.stop();
    await r.done;
    await until('web-new told to stop', () => now.frames.some((f) => f.type === 'log-stop' && f.id === req.id));
    old.ws.close();
    now.ws.close();
    await until('both gone', () => !ctl.server.kiln.hub.instances('web').some((i) => i.connected));
  });

  it('an agent that disconnects mid-stream ends it with KILN_AGENT_NOT_CONNECTED, and the answer ends', async () => {
    const a = await rawAgent('web-gone', AGENT_VERSION);
    const r = readLogs('instance=web-gone');
    await until('the log request reached web-gone', () => !!a.request());
    const { id, lines, follow } = a.request();
    expect([lines, follow]).toEqual([100, false]);
    a.send({ type: 'log-start', id, processes: ['web', 'worker'] });
    a.send({ type: 'log-lines', id, process: 'worker', lines: ['last words'] });
    await until('the line streamed', () => r.items.length === 1);
    a.ws.terminate();
    await r.done;
    expect(r.items).toEqual([
      { instance: 'web-gone', process: 'worker', line: 'last words' },
      { instance: 'web-gone', error: { code: 'KILN_AGENT_NOT_CONNECTED', message: 'the agent of web-gone disconnected' } },
    ]);
  });
});
