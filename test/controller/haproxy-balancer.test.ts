// kiln's local balancer against a real HAProxy and real HTTP servers on loopback: registration waits
// for HAProxy's own checks, drains keep requests in flight, reloads and takeovers lose no request.
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, isAlive, pollUntil } from '@kiln/shared';
import { findHaproxy, startHaproxy, type Haproxy } from '@kiln/controller';
import { tempDir } from '../helpers/release.js';

const haproxy = await findHaproxy(process.env);
// Kept, not printed: a test reads what the watchdog decided.
const logged: string[] = [];
const log = createLogger({ level: 'info', destination: { write: (l: string) => void logged.push(l) } });
const started: Haproxy[] = [];
const servers: Server[] = [];
let dir: string;

interface App {
  id: string;
  address: string;
  /** requests this app received */
  hits: number;
  /** requests in flight at the app now */
  open: number;
}

/** An app on 127.0.0.1 that answers its id; `?ms=N` answers after N ms; `status` for every answer. */
async function app(id: string, status = 200): Promise<App> {
  const a: App = { id, address: '', hits: 0, open: 0 };
  const srv = createHttpServer((req, res) => {
    a.hits++;
    a.open++;
    const ms = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('ms') ?? 0);
    setTimeout(() => {
      a.open--;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(id);
    }, ms);
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  servers.push(srv);
  a.address = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
  return a;
}

/** A port nothing listens on (connections are refused). */
async function deadAddress(): Promise<string> {
  const srv = createNetServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise((resolve) => srv.close(resolve));
  return `http://127.0.0.1:${port}`;
}

const get = async (url: string) => {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  return { status: res.status, body: await res.text() };
};

async function start(d: string): Promise<Haproxy> {
  const h = await startHaproxy({ dir: d, log, binary: haproxy! });
  started.push(h);
  return h;
}

/** Requests in a loop from `n` clients until stopped, counting answers that are not 200 or fail. */
function load(url: string, n = 4) {
  let running = true;
  const r = { ok: 0, failed: 0, errors: [] as string[] };
  const loops = Array.from({ length: n }, async () => {
    while (running) {
      try {
        const { status } = await get(url);
        if (status === 200) r.ok++;
        else {
          r.failed++;
          r.errors.push(`status ${status}`);
        }
      } catch (err) {
        r.failed++;
        r.errors.push(String((err as Error).cause ?? err));
      }
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return r;
    },
  };
}

const waitFor = async (cond: () => boolean, ms: number) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe.skipIf(!haproxy)(`HAProxy balancer${haproxy ? '' : ' (skipped: haproxy is not installed: apt-get install haproxy)'}`, () => {
  let h: Haproxy;

  beforeAll(async () => {
    dir = await tempDir('kiln-haproxy-');
    h = await start(dir);
    await h.setFleets(['web']);
  });

  afterAll(async () => {
    for (const x of started) await x.close().catch(() => undefined);
    for (const x of started) if (isAlive(x.pid)) process.kill(x.pid, 'SIGKILL');
    for (const s of servers) s.closeAllConnections();
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('registers two servers, waits until HAProxy sees them UP, and balances round robin', async () => {
    const [a, b] = [await app('a'), await app('b')];
    const lb = h.balancer('web');
    expect(lb.endpoint).toBe(h.endpoint('web'));
    const t = Date.now();
    await lb.register([a, b].map(({ id, address }) => ({ id, address })), { timeoutMs: 5_000 });
    const ms = Date.now() - t;
    expect(ms).toBeLessThan(2_000);
    const health = await lb.health(['a', 'b', 'nope']);
    expect(health.get('a')?.state).toBe('healthy');
    expect(health.get('b')?.state).toBe('healthy');
    expect(health.get('nope')?.state).toBe('unused');
    const bodies = [];
    for (let i = 0; i < 6; i++) bodies.push((await get(h.endpoint('web')!)).body);
    expect(bodies.filter((x) => x === 'a')).toHaveLength(3);
    expect(bodies.filter((x) => x === 'b')).toHaveLength(3);
    console.log(`register → UP: ${ms} ms`);
  });

  it('takes a server that never gets healthy out again: KILN_BALANCER_TIMEOUT naming it and what HAProxy says', async () => {
    const lb = h.balancer('web');
    const err = await lb.register([{ id: 'dead', address: await deadAddress() }], { timeoutMs: 800 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'KILN_BALANCER_TIMEOUT' });
    expect((err as Error).message).toMatch(/dead: MAINT \(check L4CON: Connection refused\)/);
    expect((await lb.health(['dead'])).get('dead')?.state).toBe('unused');
    for (let i = 0; i < 4; i++) expect((await get(h.endpoint('web')!)).status).toBe(200);
  });

  it('lists the registered ids: the backend\'s servers only, not its BACKEND row', async () => {
    expect((await h.balancer('web').registered!()).sort()).toEqual(['a', 'b']);
  });

  it('drains: a request in flight ends with 200, no new one reaches the server, drain resolves after it', async () => {
    const lb = h.balancer('web');
    const c = await app('c');
    await lb.drain([{ id: 'b' }], { timeoutMs: 5_000 });
    await lb.register([{ id: c.id, address: c.address }], { timeoutMs: 5_000 });
    // Round robin between a and c: two requests put one slow one on each.
    const slow = [get(`${h.endpoint('web')}?ms=1000`), get(`${h.endpoint('web')}?ms=1000`)];
    await waitFor(() => c.open === 1, 2_000);
    let slowEnded = 0;
    void Promise.all(slow).then(() => (slowEnded = Date.now()));
    const hitsBefore = c.hits;
    const draining = lb.drain([{ id: 'c' }, { id: 'unknown' }], { timeoutMs: 5_000 });
    await new Promise((r) => setTimeout(r, 100));
    expect((await lb.health(['c'])).get('c')?.state).toBe('draining');
    for (let i = 0; i < 5; i++) expect((await get(h.endpoint('web')!)).body).toBe('a');
    await draining;
    const drainedAt = Date.now();
    expect((await Promise.all(slow)).map((r) => r.status)).toEqual([200, 200]);
    expect(slowEnded).toBeGreaterThan(0);
    expect(drainedAt).toBeGreaterThanOrEqual(slowEnded - 50);
    expect(c.hits).toBe(hitsBefore);
    expect((await lb.health(['c'])).get('c')?.state).toBe('unused');
  });

  it('cuts requests still in flight once drainMs has passed', async () => {
    const lb = h.balancer('web');
    const d = await app('d');
    await lb.drain([{ id: 'a' }], { timeoutMs: 5_000 });
    await lb.register([{ id: d.id, address: d.address }], { timeoutMs: 5_000 });
    const slow = get(`${h.endpoint('web')}?ms=5000`).catch((e: unknown) => e);
    await waitFor(() => d.open === 1, 2_000);
    const t = Date.now();
    await lb.drain([{ id: 'd' }], { timeoutMs: 5_000, drainMs: 300 });
    expect(Date.now() - t).toBeLessThan(1_500);
    expect((await lb.health(['d'])).get('d')?.state).toBe('unused');
    const r = await slow;
    expect(r).not.toMatchObject({ status: 200 });
  });

  it('reports health and counts requests and 5xx per server', async () => {
    await h.setFleets(['web', 'errs']);
    const lb = h.balancer('errs');
    const [ok, bad] = [await app('ok'), await app('bad', 500)];
    await lb.register([ok, bad].map(({ id, address }) => ({ id, address })), { timeoutMs: 5_000 });
    for (let i = 0; i < 10; i++) await get(h.endpoint('errs')!);
    const stats = await lb.stats(['ok', 'bad', 'none']);
    expect(stats?.get('ok')).toEqual({ requests: 5, errors5xx: 0, inFlight: 0 });
    expect(stats?.get('bad')).toEqual({ requests: 5, errors5xx: 5, inFlight: 0 });
    expect(stats?.get('none')).toEqual({ requests: 0, errors5xx: 0, inFlight: 0 });
    const health = await lb.health(['ok']);
    expect(health.get('ok')).toMatchObject({ state: 'healthy', reason: expect.stringMatching(/^UP/) });
  });

  it('adds a fleet by a seamless reload under load: zero failed requests, servers and counters kept', async () => {
    const web = h.balancer('web');
    const e = await app('e');
    await web.register([{ id: e.id, address: e.address }], { timeoutMs: 5_000 });
    const before = (await h.balancer('errs').stats(['bad']))!.get('bad')!;
    const oldPid = h.pid;
    const port = h.endpoint('web');
    const loop = load(h.endpoint('web')!);
    await new Promise((r) => setTimeout(r, 300));
    const t = Date.now();
    await h.setFleets(['web', 'errs', 'api']);
    const reloadMs = Date.now() - t;
    await new Promise((r) => setTimeout(r, 300));
    const r = await loop.stop();
    console.log(`reload: ${reloadMs} ms; ${r.ok} requests during it`);
    expect(r.errors).toEqual([]);
    expect(r.ok).toBeGreaterThan(50);
    expect(h.pid).not.toBe(oldPid);
    expect(h.endpoint('web')).toBe(port);
    expect(h.endpoint('api')).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect((await web.health(['d', 'e'])).get('e')?.state).toBe('healthy');
    expect((await get(h.endpoint('web')!)).body).toBe('e');
    expect((await h.balancer('errs').stats(['bad']))!.get('bad')).toMatchObject({ requests: before.requests, errors5xx: before.errors5xx });
    // A fleet no longer named loses its frontend.
    await h.setFleets(['web', 'errs']);
    expect(h.endpoint('api')).toBeUndefined();
  });

  /** Kills HAProxy the way a crash would, and waits until it is gone. */
  async function crash(): Promise<number> {
    const pid = h.pid;
    process.kill(pid, 'SIGKILL');
    await pollUntil({ check: () => !isAlive(pid), timeoutMs: 2_000 });
    return pid;
  }

  it('a reload after HAProxy died starts a fresh one instead of signalling its pid (-sf), which may be another program\'s now', async () => {
    const before = await h.balancer('web').registered!();
    const dead = await crash();
    await h.setFleets(['web', 'errs', 'api']);
    expect(h.pid).not.toBe(dead);
    expect(isAlive(h.pid)).toBe(true);
    expect(await h.balancer('web').registered!()).toEqual(before);
    expect((await get(h.endpoint('web')!)).body).toBe('e');
    expect((await get(h.endpoint('api')!)).status).toBe(503);
    await h.setFleets(['web', 'errs']);
  });

  it('starts HAProxy again when it dies: the endpoint answers within seconds, with the same servers registered', async () => {
    const before = { web: await h.balancer('web').registered!(), errs: await h.balancer('errs').registered!() };
    const dead = await crash();
    const t = Date.now();
    // The new process answers a moment before kiln has checked it and records its pid.
    const answers = async () => h.pid !== dead && (await get(h.endpoint('web')!).catch(() => undefined))?.body === 'e';
    await pollUntil({ check: answers, timeoutMs: 6_000, intervalMs: 100 });
    console.log(`HAProxy killed → answering again: ${Date.now() - t} ms`);
    expect(h.pid).not.toBe(dead);
    expect(isAlive(h.pid)).toBe(true);
    expect({ web: await h.balancer('web').registered!(), errs: await h.balancer('errs').registered!() }).toEqual(before);
    expect((await h.balancer('web').health(['e'])).get('e')?.state).toBe('healthy');
  });

  it('a second start on the same directory takes the running HAProxy over without a failed request', async () => {
    const oldPid = h.pid;
    const loop = load(h.endpoint('web')!);
    await new Promise((r) => setTimeout(r, 300));
    const h2 = await start(dir);
    await new Promise((r) => setTimeout(r, 300));
    const r = await loop.stop();
    expect(r.errors).toEqual([]);
    expect(h2.pid).not.toBe(oldPid);
    await waitFor(() => !isAlive(oldPid), 3_000);
    expect(h2.endpoint('web')).toBe(h.endpoint('web'));
    expect((await h2.balancer('web').health(['e'])).get('e')?.state).toBe('healthy');
    // The first one's watchdog sees its process gone and leaves the one that replaced it alone.
    const about = (pid: number, words: string) => logged.some((l) => l.includes(`"pid":${pid},`) && l.includes(words));
    await pollUntil({ check: () => about(oldPid, 'no longer watched'), timeoutMs: 5_000, intervalMs: 100 });
    expect(about(oldPid, 'HAProxy is gone')).toBe(false);
    // The first one's close must leave the new process and its files alone.
    await h.close();
    expect(isAlive(h2.pid)).toBe(true);
    expect((await get(h2.endpoint('web')!)).body).toBe('e');
    h = h2;
  });

  it('keeps each fleet\'s port across close and a new start', async () => {
    const port = h.endpoint('web');
    const pid = h.pid;
    await h.close();
    expect(isAlive(pid)).toBe(false);
    expect(JSON.parse(await readFile(path.join(dir, 'frontends.json'), 'utf8'))).toHaveProperty('web');
    h = await start(dir);
    expect(h.endpoint('web')).toBe(port);
    expect((await h.balancer('web').health(['e'])).get('e')?.state).toBe('unused');
  });

  it('a recorded port taken by another process is KILN_PORT_IN_USE naming it and the fleet', async () => {
    const other = await tempDir('kiln-haproxy-port-');
    const blocker = createNetServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as { port: number };
    try {
      await writeFile(path.join(other, 'frontends.json'), JSON.stringify({ shop: port }));
      const err = await start(other).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'KILN_PORT_IN_USE', message: expect.stringContaining(`port ${port} of fleet shop`) });
    } finally {
      await new Promise((r) => blocker.close(r));
      await rm(other, { recursive: true, force: true });
    }
  });

  it('an error answer, a missing socket or a garbage answer is KILN_BALANCER_FAILED', async () => {
    const errs = h.balancer('errs');
    await h.setFleets(['web']);
    await expect(errs.health(['ok'])).rejects.toMatchObject({ code: 'KILN_BALANCER_FAILED', message: expect.stringContaining('No such proxy.') });
    const web = h.balancer('web');
    await h.close();
    await expect(web.health(['e'])).rejects.toMatchObject({ code: 'KILN_BALANCER_FAILED', message: expect.stringContaining('ENOENT') });
    // resume: a socket nobody reads never sees the client's end, and close() would wait for it
    const fake = createNetServer((c) => c.resume().end('garbage\n'));
    await new Promise<void>((resolve) => fake.listen(path.join(dir, 'haproxy.sock'), resolve));
    try {
      await expect(web.health(['e'])).rejects.toMatchObject({ code: 'KILN_BALANCER_FAILED', message: expect.stringContaining('garbage') });
      await expect(web.register([{ id: 'f', address: 'http://127.0.0.1:1' }], { timeoutMs: 1_000 })).rejects.toMatchObject({
        code: 'KILN_BALANCER_FAILED',
        message: expect.stringContaining('garbage'),
      });
    } finally {
      await new Promise((r) => fake.close(r));
    }
  });
});
