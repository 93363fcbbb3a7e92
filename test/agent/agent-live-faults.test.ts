// The agent's live path under bad input and faults: every case shows the stable error code, that
// nothing was lost (the installed release is current, complete and serving; state.json parses) and
// that the agent goes on (it still answers a command afterwards).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  appLayout,
  createLogger,
  createProcessSupervisor,
  isComplete,
  promoteRelease,
  readState,
  type Message,
  type MessageOf,
  type ReleaseRef,
} from '@kiln/shared';
import { CREDENTIAL, agentPool, installAction, makeAgent, servingOn, startFakeController, until, writeAgentConfig, type FakeController, type TestAgent } from '../helpers/agent.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { freePort, leftovers, makeKeys, pushApp, pushReleases, quietLog, tempDir, gatedSpec } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const AGENT_MAIN = fileURLToPath(new URL('../../packages/agent/dist/main.js', import.meta.url));

let s3: S3Fixture;
let ctl: FakeController;
const keys = makeKeys();
const agents = agentPool(() => ({ s3, keys, controller: ctl }));
const booted = agents.booted;
let rel: Record<string, ReleaseRef>;
/** 3.0.0's health check passes only once this file exists: an install held at its health step for as long as a test wants */
let gate: string;
const openGate = () => writeFile(gate, '');
const install = (version: string) => installAction(rel[version]!);

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startFakeController();
  gate = path.join(await tempDir('kiln-test-gate-'), 'open');
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': {}, '3.0.0': { kilnJson: gatedSpec(gate) }, '4.0.0': {} });
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});
afterEach(async () => {
  await rm(gate, { force: true });
  await agents.stopAll();
});

/** A predicate true only for frames recorded after this call. */
function fresh(c: FakeController = ctl): (m: object) => boolean {
  const seen = new Set<object>(c.frames.map((f) => f.msg));
  return (m) => !seen.has(m);
}

const framesOf = <T extends Message['type']>(c: FakeController, instanceId: string, type: T) =>
  c.frames.filter((f) => f.instanceId === instanceId && 'type' in f.msg && f.msg.type === type).map((f) => f.msg as MessageOf<T>);

async function resultOf(instanceId: string, commandId: string, c = ctl) {
  return (await c.waitFor(instanceId, 'result', (m) => m.result.commandId === commandId)).result;
}

/** Nothing lost: `version` is current, complete and serving, state.json parses and says so, no temporary files are left. */
async function intact(root: string, port: number, version: string): Promise<void> {
  const layout = appLayout(root, 'web');
  const state = await readState(layout.state);
  expect(state?.current?.version).toBe(version);
  expect(await readlink(layout.current)).toBe(`releases/${version}`);
  expect(await isComplete(layout, version)).toBe(true);
  expect(await servingOn(port)).toContain(`kiln-demo ${version}`);
  // The inbox is rewritten just after a command's result goes out: its temporary file may still be in flight.
  // Settled means none left at one moment: a later write may start right after.
  await until('no temporary files under the root', async () => (await leftovers(layout.root)).length === 0, 5_000);
}

/** The first frame an instance sent after `isNew` began. */
const firstFrame = (instanceId: string, isNew: (m: object) => boolean, c = ctl) => c.frames.find((f) => f.instanceId === instanceId && isNew(f.msg))?.msg;

let reportIds = 0;
/** The agent goes on: a report command is answered. */
async function answers(instanceId: string, c = ctl): Promise<void> {
  const id = `still-${++reportIds}`;
  c.command(instanceId, id, { kind: 'report' });
  expect(await resultOf(instanceId, id, c)).toMatchObject({ outcome: 'reported' });
}

describe('agent live path: malformed frames from the controller', () => {
  let a: TestAgent;
  let hello: MessageOf<'hello'>;
  beforeAll(async () => {
    a = await makeAgent({ s3, keys, controller: ctl });
    await a.agent.start();
    hello = await ctl.waitFor(a.instanceId, 'hello');
    await a.agent.idle();
  });
  afterAll(() => a.stop());

  const cases: Array<[string, () => Record<string, unknown> | string, string, RegExp]> = [
    ['not JSON', () => '{"type": "command", ', 'KILN_FRAME_INVALID', /not JSON/],
    ['a JSON array', () => '[1, 2]', 'KILN_FRAME_INVALID', /not a JSON object/],
    ['an unknown type', () => ({ type: 'reboot', id: 'x' }), 'KILN_FRAME_INVALID', /"reboot"/],
    ['the next protocol version', () => ({ v: PROTOCOL_VERSION + 1, type: 'command', id: 'v-next', instanceId: a.instanceId, app: 'web', action: install('2.0.0') }), 'KILN_PROTOCOL_VERSION', new RegExp(`version ${PROTOCOL_VERSION + 1}`)],
    ['a command of the wrong shape', () => ({ type: 'command', id: 'bad/id', instanceId: a.instanceId, app: 'web', action: { kind: 'install', version: '../2' } }), 'KILN_FRAME_INVALID', /command/],
    ['an install whose manifest is not base64', () => ({ type: 'command', id: 'inline-junk', instanceId: a.instanceId, app: 'web', action: { ...install('2.0.0'), manifest: { bytes: '{"app": "web"}', sig: '' } } }), 'KILN_FRAME_INVALID', /manifest/],
    ['a hello (the wrong direction)', () => ({ type: 'hello', identity: hello.identity, report: hello.report, results: [] }), 'KILN_FRAME_INVALID', /does not send "hello"/],
    ['a frame over 1 MiB (under 4 MiB)', () => JSON.stringify({ v: 1, type: 'command', pad: 'x'.repeat(MAX_FRAME_BYTES + 1) }), 'KILN_FRAME_TOO_LARGE', /over the limit/],
  ];

  it.each(cases)('%s: answered with an error frame carrying the code; the connection stays and nothing changes', async (_what, value, code, message) => {
    const isNew = fresh();
    const hellos = framesOf(ctl, a.instanceId, 'hello').length;
    ctl.send(a.instanceId, value());
    const err = await ctl.waitFor(a.instanceId, 'error', isNew);
    expect(err.error.code).toBe(code);
    expect(err.error.message).toMatch(message);
    await answers(a.instanceId);
    expect(framesOf(ctl, a.instanceId, 'hello')).toHaveLength(hellos);
    // nothing was accepted: the only command that ran is the report
    expect(framesOf(ctl, a.instanceId, 'progress').filter((m) => isNew(m) && !m.commandId.startsWith('still-'))).toEqual([]);
    await intact(a.root, a.port, '1.0.0');
  });

  it('a frame over 4 MiB closes the socket (ws); the agent reconnects by itself and says hello again', async () => {
    const isNew = fresh();
    const before = ctl.sockets.get(a.instanceId)!;
    const closed = new Promise<number>((resolve) => before.once('close', resolve));
    ctl.send(a.instanceId, JSON.stringify({ v: 1, type: 'command', pad: 'x'.repeat(4 * MAX_FRAME_BYTES + 1) }));
    expect(await closed).toBe(1009); // "message too big", from the agent's side
    const again = await ctl.waitFor(a.instanceId, 'hello', isNew, 5_000);
    expect(firstFrame(a.instanceId, isNew)).toBe(again);
    expect(again.report.installed?.version).toBe('1.0.0');
    expect(ctl.sockets.get(a.instanceId)).not.toBe(before);
    await answers(a.instanceId);
    await intact(a.root, a.port, '1.0.0');
  });
});

describe('agent live path: commands it must refuse', () => {
  it('a command for another instance or another app fails with KILN_WRONG_TARGET and installs nothing', async () => {
    const a = await booted();
    ctl.send(a.instanceId, { type: 'command', id: 'other-instance', instanceId: 'i-someone-else', app: 'web', action: install('2.0.0') });
    ctl.command(a.instanceId, 'other-app', install('2.0.0'), 'api');
    for (const id of ['other-instance', 'other-app']) {
      expect(await resultOf(a.instanceId, id)).toMatchObject({ outcome: 'failed', error: { code: 'KILN_WRONG_TARGET' } });
    }
    await answers(a.instanceId);
    await intact(a.root, a.port, '1.0.0');
    expect(await isComplete(appLayout(a.root, 'web'), '2.0.0')).toBe(false);
    expect(a.events.filter((e) => e.type === 'job' && e.job === 'command').map((e) => e.type === 'job' && e.commandId)).toEqual([`still-${reportIds}`]);
  });

  it('an install with a lower seq than installed fails with KILN_SEQ_DOWNGRADE; a rollback to that version goes back', async () => {
    const a = await booted();
    ctl.command(a.instanceId, 'up-2', install('2.0.0'));
    expect(await resultOf(a.instanceId, 'up-2')).toMatchObject({ outcome: 'installed', version: '2.0.0' });
    ctl.command(a.instanceId, 'down-1', install('1.0.0'));
    expect(await resultOf(a.instanceId, 'down-1')).toMatchObject({ outcome: 'failed', error: { code: 'KILN_SEQ_DOWNGRADE' } });
    await intact(a.root, a.port, '2.0.0');
    await answers(a.instanceId);
    // An explicit rollback to a named version runs the install routine with the downgrade allowed:
    // its outcome is "installed" (only a rollback to the previous release says "rolled-back").
    ctl.command(a.instanceId, 'back-1', { kind: 'rollback', version: '1.0.0', manifestSha256: rel['1.0.0']!.manifestSha256 });
    expect(await resultOf(a.instanceId, 'back-1')).toMatchObject({ outcome: 'installed', version: '1.0.0' });
    await intact(a.root, a.port, '1.0.0');
    expect((await a.agent.report()).installed).toMatchObject({ version: '1.0.0', via: 'rollback' });
    ctl.command(a.instanceId, 'back-prev', { kind: 'rollback' });
    expect(await resultOf(a.instanceId, 'back-prev')).toMatchObject({ outcome: 'rolled-back', version: '2.0.0' });
    await intact(a.root, a.port, '2.0.0');
  });
});

describe('agent live path: commands while an install runs', () => {
  it('queues a second command behind the running one, refuses the surplus with KILN_BUSY, and answers a repeated id with its stage', async () => {
    const a = await booted({ maxQueued: 1 });
    ctl.command(a.instanceId, 'q-a', install('3.0.0'));
    await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'q-a' && m.stage === 'health');
    ctl.command(a.instanceId, 'q-b', install('4.0.0'));
    expect((await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'q-b')).stage).toBe('queued');
    ctl.command(a.instanceId, 'q-c', install('4.0.0'));
    expect(await resultOf(a.instanceId, 'q-c')).toMatchObject({ outcome: 'failed', error: { code: 'KILN_BUSY' } });
    let isNew = fresh();
    ctl.command(a.instanceId, 'q-a', install('3.0.0'));
    expect((await ctl.waitFor(a.instanceId, 'progress', (m) => isNew(m) && m.commandId === 'q-a')).stage).toBe('running');
    isNew = fresh();
    ctl.command(a.instanceId, 'q-b', install('4.0.0'));
    expect((await ctl.waitFor(a.instanceId, 'progress', (m) => isNew(m) && m.commandId === 'q-b')).stage).toBe('queued');

    await openGate();
    expect(await resultOf(a.instanceId, 'q-a')).toMatchObject({ outcome: 'installed', version: '3.0.0' });
    expect(await resultOf(a.instanceId, 'q-b')).toMatchObject({ outcome: 'installed', version: '4.0.0' });
    await a.agent.idle();
    // One install at a time: every step of q-b comes after q-a's result, and each ran once.
    const mine = ctl.frames.filter((f) => f.instanceId === a.instanceId).map((f) => f.msg as Message);
    const aDone = mine.findIndex((m) => m.type === 'result' && m.result.commandId === 'q-a');
    const bSteps = mine.flatMap((m, i) => (m.type === 'progress' && m.commandId === 'q-b' && m.stage !== 'queued' ? [i] : []));
    expect(bSteps.length).toBeGreaterThan(0);
    expect(Math.min(...bSteps)).toBeGreaterThan(aDone);
    expect(framesOf(ctl, a.instanceId, 'result').map((m) => [m.result.commandId, m.result.error?.code])).toEqual([
      ['q-c', 'KILN_BUSY'],
      ['q-a', undefined],
      ['q-b', undefined],
    ]);
    const state = await readState(appLayout(a.root, 'web').state);
    expect(state!.commands.map((c) => [c.commandId, c.outcome])).toEqual([
      ['q-a', 'installed'],
      ['q-b', 'installed'],
    ]);
    await answers(a.instanceId);
    await intact(a.root, a.port, '4.0.0');
  });
});

describe('agent live path: the controller or the agent goes away', () => {
  it('the controller vanishes mid-command: the install finishes and the next hello reports it installed', async () => {
    const first = await startFakeController();
    const a = await booted({ controller: first });
    first.command(a.instanceId, 'gone-1', install('3.0.0'));
    await first.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'gone-1' && m.stage === 'health');
    await first.close();
    await until('the agent notices', () => !a.agent.connected, 5_000);
    await openGate();
    await until('the install commits', async () => (await readState(appLayout(a.root, 'web').state))?.current?.version === '3.0.0');
    await sleep(1_200); // a few failed attempts: the backoff climbs to its cap
    // The agent's config names the first one's address: the controller comes back where it was.
    const second = await startFakeController({ port: first.port });
    try {
      const back = Date.now();
      const hello = await second.waitFor(a.instanceId, 'hello', undefined, 5_000);
      expect(second.frames[0]?.msg).toBe(hello);
      expect(Date.now() - back).toBeLessThan(1_000 + 1_500); // backoffCapMs plus slack
      expect(hello.results).toContainEqual(expect.objectContaining({ commandId: 'gone-1', outcome: 'installed', version: '3.0.0' }));
      expect(hello.report.installed?.version).toBe('3.0.0');
      await answers(a.instanceId, second);
      await intact(a.root, a.port, '3.0.0');
    } finally {
      await second.close();
    }
  });

  it('the agent process is killed mid-download: the first hello after the restart carries the command as interrupted (not missing, not re-run as failed), and the old release serves', async () => {
    const proxy = await startFaultProxy(s3.s3.location.endpoint!);
    const { root, instanceId, port } = await writeAgentConfig({ s3, keys, controller: ctl, config: { s3: { ...s3.s3.location, endpoint: proxy.endpoint }, logLevel: 'warn' } });
    const start = () => {
      const child = spawn(process.execPath, [AGENT_MAIN, 'run', '--root', root], { stdio: 'ignore' });
      return { child, exited: once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]> };
    };
    let run = start();
    try {
      await ctl.waitFor(instanceId, 'report', (m) => m.report.installed?.version === '1.0.0' && m.report.operation === null);
      proxy.fault = 'stall';
      ctl.command(instanceId, 'killed-1', install('2.0.0'));
      await ctl.waitFor(instanceId, 'progress', (m) => m.commandId === 'killed-1' && m.stage === 'fetch');
      await until('the download stalls', () => proxy.artifactGets > 0);
      run.child.kill('SIGKILL');
      expect((await run.exited)[1]).toBe('SIGKILL');
      proxy.fault = 'pass';

      const isNew = fresh();
      run = start();
      const hello = await ctl.waitFor(instanceId, 'hello', isNew);
      expect(firstFrame(instanceId, isNew)).toBe(hello);
      expect(hello.results).toContainEqual(expect.objectContaining({ commandId: 'killed-1', outcome: 'interrupted', error: expect.objectContaining({ code: 'KILN_INTERRUPTED' }) }));
      await answers(instanceId);
      await intact(root, port, '1.0.0');
      // The command waits in the inbox too, and the controller may send it again: either way it is
      // the same interrupted command, never run a second time nor reported otherwise.
      ctl.command(instanceId, 'killed-1', install('2.0.0'));
      // (the report command answered above ran after the inbox's copy: commands run in order)
      expect(isNew(await resultOf(instanceId, 'killed-1'))).toBe(true);
      expect(framesOf(ctl, instanceId, 'result').filter((m) => isNew(m) && m.result.commandId === 'killed-1').map((m) => m.result.outcome)).toEqual(['interrupted']);
      await intact(root, port, '1.0.0');
    } finally {
      run.child.kill('SIGTERM');
      await run.exited;
      await createProcessSupervisor({ appDir: appLayout(root, 'web').appDir, log: quietLog() }).stop();
      await proxy.close();
    }
  });
});

describe('agent live path: the signed manifest sent with an install command', () => {
  it('is used instead of a GET once it verifies; a tampered one or another release\'s is refused and nothing changes; without it the agent fetches', async () => {
    const proxy = await startFaultProxy(s3.s3.location.endpoint!);
    try {
      const a = await booted({ config: { s3: { ...s3.s3.location, endpoint: proxy.endpoint } } });
      const signed = async (version: string) => {
        const m = await s3.store.getManifest('web', version);
        return { bytes: m.bytes.toString('base64'), sig: m.sig.toString('base64') };
      };
      const manifestGets = () => proxy.requests.filter((r) => r.startsWith('GET ') && /\/manifest\.json(\?|$)/.test(r)).length;
      const two = await signed('2.0.0');
      const tampered = Buffer.from(two.bytes, 'base64');
      tampered[tampered.indexOf('2.0.0')] = '3'.charCodeAt(0);
      ctl.command(a.instanceId, 'inline-tampered', { ...install('2.0.0'), manifest: { ...two, bytes: tampered.toString('base64') } });
      expect(await resultOf(a.instanceId, 'inline-tampered')).toMatchObject({ outcome: 'failed', error: { code: 'KILN_SIGNATURE_INVALID' } });
      // Signed, but not the release the command names by digest.
      ctl.command(a.instanceId, 'inline-other', { ...install('2.0.0'), manifest: await signed('4.0.0') });
      expect(await resultOf(a.instanceId, 'inline-other')).toMatchObject({ outcome: 'failed', error: { code: 'KILN_MANIFEST_MISMATCH' } });
      await intact(a.root, a.port, '1.0.0');

      const before = manifestGets();
      ctl.command(a.instanceId, 'inline-good', { ...install('2.0.0'), manifest: two });
      expect(await resultOf(a.instanceId, 'inline-good')).toMatchObject({ outcome: 'installed', version: '2.0.0' });
      expect(manifestGets()).toBe(before);
      await intact(a.root, a.port, '2.0.0');
      ctl.command(a.instanceId, 'fetched', install('4.0.0'));
      expect(await resultOf(a.instanceId, 'fetched')).toMatchObject({ outcome: 'installed', version: '4.0.0' });
      expect(manifestGets()).toBe(before + 1);
      await intact(a.root, a.port, '4.0.0');
      // The inbox keeps the command, not the manifest it carried (a restart fetches it).
      // (a gated release above 4.0.0: held at its health check until the gate opens)
      const held = await pushApp({ store: s3.store, keys, version: '5.0.0', kilnJson: gatedSpec(gate) });
      const action5 = { kind: 'install', version: '5.0.0', seq: held.manifest.seq, manifestSha256: held.manifestSha256 };
      ctl.command(a.instanceId, 'inline-held', { ...action5, manifest: await signed('5.0.0') });
      await ctl.waitFor(a.instanceId, 'progress', (m) => m.commandId === 'inline-held' && m.stage === 'health');
      const inbox = await readFile(path.join(a.root, 'var/lib/kiln/agent/inbox.json'), 'utf8');
      expect(JSON.parse(inbox)).toEqual([expect.objectContaining({ id: 'inline-held', action: action5 })]);
      await openGate();
      expect(await resultOf(a.instanceId, 'inline-held')).toMatchObject({ outcome: 'installed', version: '5.0.0' });
    } finally {
      await proxy.close();
    }
  });
});

describe('agent live path: heartbeat, polling, the log', () => {
  it('a controller that stops answering pings is dropped within a few heartbeat periods and reconnected', async () => {
    // ws answers pings by itself; this server answers them only while `answering`.
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, autoPong: false });
    await new Promise((resolve) => wss.once('listening', resolve));
    const { port } = wss.address() as AddressInfo;
    let answering = true;
    const conns: Array<{ at: number; closedAt?: number; pings: number }> = [];
    wss.on('connection', (ws: WebSocket) => {
      const c: (typeof conns)[number] = { at: Date.now(), pings: 0 };
      conns.push(c);
      ws.on('ping', (data) => {
        c.pings++;
        if (answering) ws.pong(data);
      });
      ws.on('close', () => (c.closedAt = Date.now()));
    });
    try {
      await booted({ config: { controller: { url: `ws://127.0.0.1:${port}/agents`, credential: CREDENTIAL } } });
      await until('connected', () => conns.length === 1);
      await sleep(4 * 500); // four heartbeat periods, answered: the connection stays
      expect(conns).toHaveLength(1);
      expect(conns[0]!.pings).toBeGreaterThanOrEqual(3);
      answering = false;
      const silentFrom = Date.now();
      await until('the agent drops the silent controller', () => conns[0]!.closedAt !== undefined, 5_000);
      expect(conns[0]!.closedAt! - silentFrom).toBeLessThanOrEqual(3 * 500 + 500);
      await until('the agent reconnects', () => conns.length === 2, 5_000);
      expect(conns[1]!.at - conns[0]!.closedAt!).toBeLessThanOrEqual(1_000 + 250); // backoffCapMs
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    }
  });

  const promote = (version: string, channel: string) => promoteRelease({ store: s3.store, app: 'web', version, channel, key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });

  it('with the controller unreachable the agent polls the channel and installs a newly promoted release', async () => {
    await promote('1.0.0', 'poll-away');
    // A port nothing listens on: every connect is refused.
    const refusing = `ws://127.0.0.1:${await freePort()}/agents`;
    const a = await booted({ config: { channel: 'poll-away', pollIntervalMs: 1_000, controller: { url: refusing, credential: CREDENTIAL } } });
    await intact(a.root, a.port, '1.0.0');
    await promote('2.0.0', 'poll-away');
    await until('a poll installs 2.0.0', async () => (await readState(appLayout(a.root, 'web').state))?.current?.version === '2.0.0', 5_000);
    await a.agent.idle();
    await intact(a.root, a.port, '2.0.0');
    expect((await a.agent.report()).installed).toMatchObject({ version: '2.0.0', via: 'hotfix' });
    expect(a.events.some((e) => e.type === 'connected' && e.connected)).toBe(false);
  });

  it('while connected the agent does not poll: a newly promoted release waits for the controller', async () => {
    await promote('1.0.0', 'poll-near');
    const a = await booted({ config: { channel: 'poll-near', pollIntervalMs: 1_000 } });
    await until('connected', () => a.agent.connected);
    await promote('2.0.0', 'poll-near');
    await sleep(2 * 1_200); // two poll periods at their longest jitter
    expect(a.events.filter((e) => e.type === 'job' && e.job === 'poll')).toEqual([]);
    await answers(a.instanceId);
    await intact(a.root, a.port, '1.0.0');
  });

  it('the log never carries the agent credential, at any level, through connects, refusals and reconnects', async () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'trace', destination: { write: (line: string) => void lines.push(line) } });
    const a = await booted({ log });
    await ctl.waitFor(a.instanceId, 'hello');
    ctl.send(a.instanceId, 'not json');
    ctl.command(a.instanceId, 'log-1', install('2.0.0'));
    expect(await resultOf(a.instanceId, 'log-1')).toMatchObject({ outcome: 'installed' });
    const isNew = fresh();
    ctl.sockets.get(a.instanceId)!.terminate();
    await ctl.waitFor(a.instanceId, 'hello', isNew, 5_000);
    // An agent holding a credential the controller refuses: turned away, and it keeps trying.
    const wrong = 'not-the-fleet-credential-0123456789';
    const b = await booted({ log, config: { controller: { url: ctl.url, credential: wrong } } });
    await until('two refusals', () => lines.filter((l) => l.includes(b.instanceId) && l.includes('"code":1008')).length >= 2, 5_000);
    const text = lines.join('');
    expect(text).toContain('connected to the controller');
    expect(text).toContain('refused a frame from the controller');
    expect(text).not.toContain(CREDENTIAL);
    expect(text).not.toContain(wrong);
  });
});
