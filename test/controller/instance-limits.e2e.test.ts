// Regression (issue 16, item 13): anyone with a fleet's agent credential could create unlimited,
// permanent instance records by connecting with fresh ids (5,000 connections → 5,207 records of
// ~4.5 KiB each): the record was made at the upgrade, before any hello, and never went. Now a record
// is made only for an admitted hello, a fleet holds at most max(2 × size, size + 10) instances
// outside its groups (KILN_INSTANCE_LIMIT past it), a connection without a hello is closed after the
// hello timeout, and records of instances away for the expiry window go. Real WebSockets to a real
// buildServer on 127.0.0.1.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { buildServer, type KilnServer } from '@kiln/controller';
import { createS3Client } from '@kiln/shared';
import { OPERATOR, apiClient } from '../helpers/controller.js';
import { until } from '../helpers/agent.js';
import { agentKey, handReport, helloFrame, nonceOf } from '../helpers/raw-agent.js';
import { makeKeys, quietLog } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let server: KilnServer;
let api: ReturnType<typeof apiClient>;
let agentsUrl: string;
let credential: string;
const EXPIRE_MS = 3_000;
const HELLO_TIMEOUT_MS = 500;
/** size 5: max(2 × 5, 5 + 10) = 15 instances outside groups */
const CAP = 15;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const heapUsed = () => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

beforeAll(async () => {
  s3 = await startS3();
  server = await buildServer({
    log: quietLog(),
    s3: createS3Client(s3.s3.location),
    bucket: s3.s3.location.bucket,
    operatorTokens: [OPERATOR],
    trustedKeys: keys.keys,
    instances: { expireAfterMs: EXPIRE_MS, helloTimeoutMs: HELLO_TIMEOUT_MS },
  });
  await server.listen({ host: '127.0.0.1', port: 0 });
  const { port } = server.server.address() as { port: number };
  api = apiClient(`http://127.0.0.1:${port}`);
  agentsUrl = `ws://127.0.0.1:${port}/v1/agents`;
  const created = await api('POST', '/v1/fleets', { name: 'many', app: 'web', size: 5 });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  credential = created.body.agentCredential;
});
afterAll(async () => {
  await server.close();
  await s3.close();
});

const key = agentKey();
const records = () => server.kiln.hub.instances('many').length;
/** How many instances the bucket's record of the fleet holds (NaN while s3rver is still writing it). */
async function pinnedInBucket(): Promise<number> {
  try {
    const res = await createS3Client(s3.s3.location).send(new GetObjectCommand({ Bucket: s3.s3.location.bucket, Key: 'controller/instances/many.json' }));
    return Object.keys(JSON.parse(await res.Body!.transformToString()).instances).length;
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return 0;
    // s3rver writes an object in place while the controller rewrites it: a read then is cut short
    // (real S3 replaces objects whole); the next poll reads it whole.
    if (err instanceof SyntaxError || (err as Error).message === 'aborted') return NaN;
    throw err;
  }
}

/** One connection as `id`: says a signed hello (unless `silent`), resolves with how it was closed, or with the open socket once admitted. */
async function connect(id: string, silent = false): Promise<{ ws: WebSocket; closed: Promise<{ code: number; reason: string }> }> {
  const ws = new WebSocket(agentsUrl, { headers: { authorization: `Bearer ${credential}`, 'x-kiln-instance': id }, perMessageDeflate: false });
  ws.on('error', () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  const nonce = await nonceOf(ws);
  if (!silent) ws.send(helloFrame({ key, nonce, instanceId: id, report: handReport(id) }));
  return { ws, closed };
}

/** Opens `n` connections with fresh ids, `wave` at a time; each either stays (admitted: kept in `held`) or is closed by the controller. */
async function flood(prefix: string, n: number, held: WebSocket[], wave = 250): Promise<Map<string, number>> {
  const reasons = new Map<string, number>();
  for (let from = 0; from < n; from += wave) {
    await Promise.all(
      Array.from({ length: Math.min(wave, n - from) }, async (_, i) => {
        const { ws, closed } = await connect(`${prefix}-${from + i}`);
        const outcome = await Promise.race([closed, new Promise<'open'>((resolve) => setTimeout(() => resolve('open'), 2_000))]);
        if (outcome === 'open') {
          held.push(ws);
          reasons.set('admitted', (reasons.get('admitted') ?? 0) + 1);
        } else {
          const code = `${outcome.code} ${outcome.reason.split(':')[0]}`;
          reasons.set(code, (reasons.get(code) ?? 0) + 1);
        }
      }),
    );
  }
  return reasons;
}

describe('instance records per fleet are bounded', () => {
  it('regression: 5,000 connections with fresh ids and valid hellos leave the cap of records (15), refuse the rest with KILN_INSTANCE_LIMIT, and the heap does not grow with them', async () => {
    const held: WebSocket[] = [];
    // a first wave that fills the cap, so the heap is measured with the records the fleet may hold
    expect(Object.fromEntries(await flood('warm', CAP, held))).toEqual({ admitted: CAP });
    const before = heapUsed();
    const outcomes = await flood('fresh', 5_000, held);
    expect(Object.fromEntries(outcomes)).toEqual({ '1008 KILN_INSTANCE_LIMIT': 5_000 });
    expect(records()).toBe(CAP);
    await until('the bucket holds the same records', async () => (await pinnedInBucket()) === CAP);
    const grown = heapUsed() - before;
    // 5,000 records of ~4.5 KiB each were ~22 MiB; what remains is noise of the sockets that went
    expect(grown, `heap grew by ${(grown / 1048576).toFixed(1)} MiB`).toBeLessThan(8 * 1048576);
    // the instances admitted first are untouched
    expect(held.every((ws) => ws.readyState === WebSocket.OPEN)).toBe(true);
    for (const ws of held) ws.close();
    await until('all away', () => server.kiln.hub.instances('many').every((i) => !i.connected));
  }, 120_000);

  it('a connection that sends no hello leaves no record and is closed after the hello timeout (KILN_AGENT_TIMEOUT); past the cap, waiting ones are refused at once', async () => {
    const ids = Array.from({ length: CAP + 5 }, (_, i) => `silent-${i}`);
    const conns = await Promise.all(ids.map((id) => connect(id, true)));
    const closes = await Promise.all(conns.map((c) => c.closed));
    const count = (what: string) => closes.filter((c) => `${c.code} ${c.reason.split(':')[0]}` === what).length;
    expect([count('1008 KILN_AGENT_TIMEOUT'), count('1008 KILN_INSTANCE_LIMIT')]).toEqual([CAP, 5]);
    for (const id of ids) expect(server.kiln.hub.get(id)).toBeUndefined();
  });

  it('records of instances away for the expiry window go, from memory and from the bucket; new instances are admitted again', async () => {
    await until('the away instances expired', () => records() === 0, EXPIRE_MS * 4);
    await until('the bucket forgot them', async () => (await pinnedInBucket()) === 0);
    const held: WebSocket[] = [];
    expect(Object.fromEntries(await flood('later', 3, held))).toEqual({ admitted: 3 });
    expect(records()).toBe(3);
    for (const ws of held) ws.close();
  }, 30_000);
});
