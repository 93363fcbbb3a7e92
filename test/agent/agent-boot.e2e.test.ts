// The agent's boot path against what goes wrong on a real host: a bad config, S3 away, expired or
// replayed pointers, corrupt files on disk, an install killed half-way; and the kiln-agent CLI.
// Every case checks that nothing was lost: the installed release is current and serving, state.json
// parses, and the agent is still running.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sealImage } from '@kiln/agent';
import { AgentReport, InstallState, appLayout, createLogger, createProcessSupervisor, promoteRelease, readJournal, type Logger, type ReleaseRef, type Via } from '@kiln/shared';
import { installAction, makeAgent, startFakeController, until, writeAgentConfig, type TestAgent } from '../helpers/agent.js';
import { finished, kilnAgent, startKilnAgent, type CliResult } from '../helpers/cli.js';
import { startFaultProxy, startSilentServer } from '../helpers/fault-proxy.js';
import { freePort, leftovers, makeKeys, pushReleases, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
const keys = makeKeys();
const cleanups: Array<() => Promise<unknown>> = [];
let v1: ReleaseRef;
let v2: ReleaseRef;
/** short periods so that retries and polls show within a test */
const FAST = { backoffCapMs: 300, pollIntervalMs: 1_000 };

beforeAll(async () => {
  s3 = await startS3();
  // on no channel: each case promotes to a channel of its own
  const rel = await pushReleases({ store: s3.store, keys }, ['1.0.0', '2.0.0']);
  [v1, v2] = [rel['1.0.0']!, rel['2.0.0']!];
});
afterAll(() => s3.close());
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const promote = (version: string, channel: string, ttlMs = 3_600_000) => promoteRelease({ store: s3.store, app: 'web', version, channel, key: keys.key, keys: keys.keys, ttlMs });
const stateOf = async (root: string) => InstallState.parse(JSON.parse(await readFile(appLayout(root, 'web').state, 'utf8')));
const currentOf = async (root: string) => path.basename(await readlink(appLayout(root, 'web').current));
/** the version state.json records as installed, once it does */
const installedOn = async (root: string) => (await stateOf(root).catch(() => undefined))?.current?.version;

/** `kiln-agent run --root ROOT` as a child process, killed after the test if still running. */
function runAgent(root: string): { child: ChildProcess; out: Promise<CliResult> } {
  const child = startKilnAgent(['run', '--root', root]);
  const out = finished(child);
  cleanups.push(async () => child.kill('SIGKILL'));
  return { child, out };
}

type AgentArgs = Omit<Parameters<typeof makeAgent>[0], 's3' | 'keys'>;

async function agent(args: AgentArgs = {}): Promise<TestAgent> {
  const a = await makeAgent({ s3, keys, ...args, config: { ...FAST, ...args.config } });
  cleanups.push(() => a.stop());
  return a;
}

interface Host {
  root: string;
  port: number;
  channel: string;
  /** the stopped first agent: its serving() and stop() still work on the root */
  first: TestAgent;
}

/** A host that installed `version` from `channel` at boot and then "rebooted": agent and app both stopped. */
async function rebootedHost(channel: string, version: string): Promise<Host> {
  await promote(version, channel);
  const first = await agent({ config: { channel } });
  await first.agent.start();
  await first.agent.idle();
  expect(await first.serving()).toContain(`kiln-demo ${version}`);
  await first.stop();
  expect(await first.serving()).toBeUndefined();
  return { root: first.root, port: first.port, channel, first };
}

/** The host boots again: a fresh agent on the same root and port. */
async function boot(host: Host, args: AgentArgs = {}): Promise<TestAgent> {
  const a = await agent({ ...args, root: host.root, config: { channel: host.channel, port: host.port, ...args.config } });
  await a.agent.start();
  return a;
}

/** Nothing lost: `version` is current, recorded in a state.json that parses, serving, and the agent answers. */
async function expectServing(a: TestAgent, version: string, via?: Via): Promise<AgentReport> {
  await expect.poll(() => a.serving(), { timeout: 5_000 }).toContain(`kiln-demo ${version}`);
  expect(await currentOf(a.root)).toBe(version);
  expect((await stateOf(a.root)).current).toMatchObject({ version, ...(via ? { via } : {}) });
  const r = AgentReport.parse(await a.agent.report());
  expect(r.installed).toMatchObject({ version, ...(via ? { via } : {}) });
  expect(r.service.active).toBe(true);
  return r;
}

/** A logger whose lines the test can read. */
function capturedLog(): { log: Logger; messages: () => string[] } {
  const lines: Array<{ msg?: string }> = [];
  const log = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { log, messages: () => lines.map((l) => l.msg ?? '') };
}

const noStack = /^\s+at /m;

describe('kiln-agent: config and usage', () => {
  const good = () => ({ instanceId: 'i-config', imageId: 'img-test', app: 'web', channel: 'stable', s3: s3.s3.location, keys: [keys.publicPem] });

  async function runWith(config: unknown, files: Record<string, string> = {}) {
    const root = await tempDir('kiln-test-agent-config-');
    await mkdir(path.join(root, 'etc/kiln'), { recursive: true });
    if (config !== undefined) await writeFile(path.join(root, 'etc/kiln/agent.json'), typeof config === 'string' ? config : JSON.stringify(config));
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(root, name), text);
    return { root, ...(await kilnAgent(['run', '--root', root])) };
  }

  it('refuses a missing, non-JSON, unknown-key or invalid config: exit 1, KILN_CONFIG_INVALID naming the file and field', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [undefined, /cannot read the agent config \S*etc\/kiln\/agent\.json: ENOENT/],
      ['{"instanceId": ', /the agent config \S*etc\/kiln\/agent\.json is not JSON/],
      [{ ...good(), pollIntervalSecs: 5 }, /agent\.json is invalid: .*pollIntervalSecs/],
      [{ ...good(), instanceId: '../i-1' }, /agent\.json is invalid: instanceId: /],
      [{ ...good(), s3: { ...good().s3, bucket: 'Not_A_Bucket' } }, /agent\.json is invalid: s3\.bucket: /],
      [{ ...good(), s3: { ...good().s3, endpoint: 'not a url' } }, /agent\.json is invalid: s3\.endpoint: /],
    ];
    const results = await Promise.all(cases.map(([config]) => runWith(config)));
    results.forEach((r, i) => {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^error KILN_CONFIG_INVALID: [^\n]*\n$/);
      expect(r.stderr).toMatch(cases[i]![1]);
      expect(r.stderr).not.toMatch(noStack);
      // refused before anything was touched
      expect(existsSync(path.join(r.root, 'var'))).toBe(false);
    });
  });

  it('refuses pinned keys that are not ed25519 public keys: exit 1, KILN_KEY_INVALID naming the key', async () => {
    const notPem = '-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n';
    const cases: Array<[Parameters<typeof runWith>, RegExp]> = [
      [[{ ...good(), keys: [notPem] }], /keys\[0\] of the agent config is not a PEM public key/],
      [[{ ...good(), keys: [keys.publicPem, 'etc/kiln/release.pub'] }, { 'etc/kiln/release.pub': 'not a key\n' }], /\S*etc\/kiln\/release\.pub is not a PEM public key/],
      [[{ ...good(), keys: ['/etc/kiln/missing.pub'] }], /cannot read the pinned key \S*etc\/kiln\/missing\.pub/],
    ];
    const results = await Promise.all(cases.map(([args]) => runWith(...args)));
    results.forEach((r, i) => {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^error KILN_KEY_INVALID: [^\n]*\n$/);
      expect(r.stderr).toMatch(cases[i]![1]);
      expect(r.stderr).not.toMatch(noStack);
    });
  });

  it('prints usage: exit 2 with no command or an unknown one, exit 0 with --help', async () => {
    const [none, unknown, help] = await Promise.all([kilnAgent([]), kilnAgent(['boot']), kilnAgent(['--help'])]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('usage: kiln-agent COMMAND');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^error KILN_USAGE: unknown command "boot"/);
    expect(unknown.stderr).toContain('usage: kiln-agent COMMAND');
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('usage: kiln-agent COMMAND');
    for (const c of ['run', 'status', 'seal']) expect(help.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
    expect(help.stderr).toBe('');
  });
});

describe('agent boot: the bucket and the channel pointer', () => {
  it('S3 unreachable at boot: starts the installed release, retries within the backoff cap, converges once S3 is back', async () => {
    const host = await rebootedHost('down', '1.0.0');
    await promote('2.0.0', 'down');
    // Known before anything listens there: S3 comes back on this very endpoint later in the case.
    const deadPort = await freePort();
    const a = await boot(host, { config: { s3: { ...s3.s3.location, endpoint: `http://127.0.0.1:${deadPort}` } } });
    // the release installed before the "reboot" serves while the channel cannot be read
    await expectServing(a, '1.0.0', 'boot');

    const failures: number[] = [];
    await until(
      'five failed boot attempts',
      async () => {
        const { lastError } = await a.agent.report();
        if (lastError && Date.parse(lastError.at) !== failures.at(-1)) {
          expect(lastError.code).toMatch(/^KILN_S3_(UNREACHABLE|TIMEOUT)$/);
          failures.push(Date.parse(lastError.at));
        }
        return failures.length >= 5;
      },
      // uncapped (1 s, 2 s, 4 s, …) five attempts would take at least 7.5 s
      6_000,
    );
    const gaps = failures.slice(1).map((t, i) => t - failures[i]!);
    // a backoff, not a storm (at least half the cap between attempts), and capped
    for (const g of gaps) expect(g).toBeGreaterThanOrEqual(FAST.backoffCapMs / 2 - 5);
    for (const g of gaps) expect(g).toBeLessThanOrEqual(FAST.backoffCapMs + 1_000);
    expect(await currentOf(a.root)).toBe('1.0.0');

    // S3 comes back on the same endpoint: the same agent converges to the channel's release
    const proxy = await startFaultProxy(s3.s3.location.endpoint!, 'pass', { port: deadPort });
    cleanups.push(() => proxy.close());
    await until('2.0.0 installed', async () => (await a.agent.report()).installed?.version === '2.0.0', 10_000);
    await a.agent.idle();
    const r = await expectServing(a, '2.0.0', 'boot');
    expect(r.lastError).toBeNull();
    expect((await stateOf(a.root)).channels.down).toBe(2);
  });

  // Regression: while the boot resolved the channel pointer, the report named the operation's version
  // '?', which the report schema (and so the controller) refuses: a hung bucket made every report invalid.
  it('S3 hung at boot: the report sent while the channel pointer is resolved is a valid report', async () => {
    const host = await rebootedHost('hung', '1.0.0');
    const silent = await startSilentServer();
    const a = await boot(host, { config: { s3: { ...s3.s3.location, endpoint: silent.endpoint } } });
    // closed first (cleanups run in reverse): the hung request fails, so the agent can stop
    cleanups.push(() => silent.close());
    await until('the pointer request hangs', () => silent.accepted > 0);
    const r = await expectServing(a, '1.0.0', 'boot');
    expect(r.operation).toBeNull();
  });

  it('an expired channel pointer at boot is refused with KILN_POINTER_EXPIRED; the old release serves, no retry storm', async () => {
    const host = await rebootedHost('expiring', '1.0.0');
    const p = await promote('2.0.0', 'expiring', 100);
    await sleep(Date.parse(p.expires) - Date.now() + 20);
    const proxy = await startFaultProxy(s3.s3.location.endpoint!);
    cleanups.push(() => proxy.close());
    const before = await stateOf(host.root);
    const a = await boot(host, { store: s3.storeVia(proxy.endpoint) });
    await a.agent.idle();
    await expectServing(a, '1.0.0', 'boot');
    expect((await a.agent.report()).lastError?.code).toBe('KILN_POINTER_EXPIRED');

    // the boot does not retry a refusal; only the poll period reads the pointer again
    const started = Date.now();
    await sleep(2_500);
    const pointerGets = proxy.requests.filter((r) => /^GET \/kiln\/channels\/web\/expiring\.json(\?|$)/.test(r)).length;
    expect(pointerGets).toBeGreaterThanOrEqual(2);
    expect(pointerGets).toBeLessThanOrEqual(2 + Math.ceil((Date.now() - started) / (FAST.pollIntervalMs * 0.8)));
    expect(proxy.artifactGets).toBe(0);
    expect((await stateOf(a.root)).channels).toEqual(before.channels);
    await expectServing(a, '1.0.0', 'boot');
    expect((await a.agent.report()).lastError?.code).toBe('KILN_POINTER_EXPIRED');

    // the agent still runs: a renewed pointer is installed at the next poll
    await promote('2.0.0', 'expiring');
    await until('the renewed pointer installed', async () => (await a.agent.report()).installed?.version === '2.0.0', 5_000);
    await a.agent.idle();
    expect((await expectServing(a, '2.0.0')).lastError).toBeNull();
  });

  it('a replayed older pointer at boot is refused with KILN_POINTER_STALE and changes nothing', async () => {
    await promote('1.0.0', 'replay');
    const old = await s3.store.getPointer('web', 'replay');
    const host = await rebootedHost('replay', '2.0.0');
    expect((await stateOf(host.root)).channels.replay).toBe(2);
    await s3.store.putPointer('web', 'replay', old);
    const stateBytes = await readFile(appLayout(host.root, 'web').state, 'utf8');

    const a = await boot(host);
    await a.agent.idle();
    await expectServing(a, '2.0.0', 'boot');
    const first = (await a.agent.report()).lastError;
    expect(first?.code).toBe('KILN_POINTER_STALE');
    expect(await readFile(appLayout(host.root, 'web').state, 'utf8')).toBe(stateBytes);
    // still running, and the polls keep refusing it
    await until('a poll refused it again', async () => (await a.agent.report()).lastError?.at !== first?.at, 5_000);
    expect((await a.agent.report()).lastError?.code).toBe('KILN_POINTER_STALE');
    await expectServing(a, '2.0.0', 'boot');
  });
});

describe('agent boot: corrupt files on disk', () => {
  it('rebuilds a garbage state.json and discards a garbage journal.json, and serves', async () => {
    const host = await rebootedHost('corrupt', '1.0.0');
    const layout = appLayout(host.root, 'web');
    await writeFile(layout.state, '\0garbage{');
    await writeFile(layout.journal, '{"schema": 1, "op": "inst');
    const { log, messages } = capturedLog();
    const a = await boot(host, { log });
    await a.agent.idle();
    const r = await expectServing(a, '1.0.0');
    expect(r.lastError).toBeNull();
    const state = await stateOf(host.root);
    expect(state.rebuiltAt).toBeDefined();
    expect(state.channels.corrupt).toBe(1);
    expect(existsSync(layout.journal)).toBe(false);
    expect(messages()).toEqual(expect.arrayContaining(['install state does not parse: rebuilding it from the disk', 'install journal does not parse: discarding it']));
  });

  it('ignores a garbage command inbox with a warning', async () => {
    const host = await rebootedHost('inbox', '1.0.0');
    await writeFile(path.join(host.root, 'var/lib/kiln/agent/inbox.json'), '[{"type":"command",');
    const { log, messages } = capturedLog();
    const a = await boot(host, { log });
    await a.agent.idle();
    expect((await expectServing(a, '1.0.0', 'boot')).lastError).toBeNull();
    expect(messages()).toContain('the command inbox does not parse: starting with an empty one');
  });

  // Regression: the marker's error was reported only until the boot install succeeded, which cleared
  // lastError, though the marker stays broken for as long as the agent runs.
  it('reports a garbage image marker as KILN_STATE_INVALID with no image, even after a successful boot install', async () => {
    const host = await rebootedHost('marker', '1.0.0');
    await writeFile(path.join(host.root, 'etc/kiln/image.json'), '{"schema": 1, "app": ');
    await promote('2.0.0', 'marker');
    const a = await boot(host);
    await a.agent.idle();
    const r = await expectServing(a, '2.0.0', 'boot');
    expect(r.image).toBeNull();
    expect(r.lastError?.code).toBe('KILN_STATE_INVALID');
    expect(r.lastError?.message).toContain('image.json');
  });
});

describe('kiln-agent run: a real process', () => {
  it('at boot, recovers the journal of an install SIGKILLed half-way, then installs the channel', async () => {
    const host = await rebootedHost('killed', '1.0.0');
    const layout = appLayout(host.root, 'web');
    await promote('2.0.0', 'killed');
    const proxy = await startFaultProxy(s3.s3.location.endpoint!, 'stall');
    cleanups.push(() => proxy.close());
    await writeAgentConfig({ s3, keys, root: host.root, config: { ...FAST, channel: 'killed', port: host.port, s3: { ...s3.s3.location, endpoint: proxy.endpoint } } });

    const killed = runAgent(host.root);
    await until('the artifact download stalls', async () => proxy.artifactGets > 0 && (await readJournal(layout.journal).catch(() => undefined))?.step === 'fetch', 10_000);
    killed.child.kill('SIGKILL');
    await killed.out;
    expect(await leftovers(host.root)).toEqual(expect.arrayContaining([layout.journal, layout.lock]));
    // the app outlives its agent
    expect(await host.first.serving()).toContain('kiln-demo 1.0.0');

    proxy.fault = 'pass';
    const again = runAgent(host.root);
    await until('2.0.0 installed', async () => (await installedOn(host.root)) === '2.0.0', 15_000);
    await expect.poll(() => host.first.serving(), { timeout: 5_000 }).toContain('kiln-demo 2.0.0');
    expect(await currentOf(host.root)).toBe('2.0.0');
    again.child.kill('SIGTERM');
    const r = await again.out;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('recovered an interrupted install');
    expect(r.stderr).toContain('KILN_INTERRUPTED');
    expect(await leftovers(host.root)).toEqual([]);
    expect((await stateOf(host.root)).current).toMatchObject({ version: '2.0.0', via: 'boot' });
  });

  // Regression: with no controller nothing held the event loop (the agent's timers are unref'd), so
  // `kiln-agent run` exited (code 13, an unsettled await) as soon as its boot install was done.
  it('keeps running after the boot install with no controller, and installs what the channel points to next', async () => {
    await promote('1.0.0', 'standalone');
    const { root, port } = await writeAgentConfig({ s3, keys, config: { ...FAST, channel: 'standalone' } });
    cleanups.push(() => createProcessSupervisor({ appDir: appLayout(root, 'web').appDir, log: quietLog() }).stop());
    const { child, out } = runAgent(root);
    await until('1.0.0 installed', async () => (await installedOn(root)) === '1.0.0', 10_000);
    await sleep(FAST.pollIntervalMs * 1.5);
    expect(child.exitCode).toBeNull();
    await promote('2.0.0', 'standalone');
    await until('2.0.0 installed by a poll', async () => (await installedOn(root)) === '2.0.0', 5_000);
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toContain('kiln-demo 2.0.0');
    child.kill('SIGTERM');
    const r = await out;
    expect(r.code, r.stderr).toBe(0);
  });
});

describe('agent boot: relaunch and hotfix', () => {
  it('an image sealed with 1.0.0 whose channel now points to 2.0.0 installs 2.0.0 at boot', async () => {
    const host = await rebootedHost('relaunch', '1.0.0');
    await sealImage(host.root, 'web', quietLog());
    await promote('2.0.0', 'relaunch');
    const a = await boot(host);
    await a.agent.idle();
    const r = await expectServing(a, '2.0.0', 'boot');
    expect(r.image).toMatchObject({ version: '1.0.0', seq: v1.seq });
    expect(r.installed?.seq).toBe(v2.seq);
  });

  it('a hotfixed instance keeps its hotfix when its agent restarts, though the accepted pointer names the older release', async () => {
    const host = await rebootedHost('hotfixed', '1.0.0');
    const ctl = await startFakeController();
    cleanups.push(() => ctl.close());
    const live = await boot(host, { controller: ctl });
    await live.agent.idle();
    ctl.command(live.instanceId, 'hotfix-1', installAction(v2));
    expect((await ctl.waitFor(live.instanceId, 'result')).result).toMatchObject({ outcome: 'installed', version: '2.0.0' });
    await live.stop();

    // a reboot with no controller: boot and the polls both read the pointer, still at 1.0.0
    const a = await boot(host);
    await a.agent.idle();
    await expectServing(a, '2.0.0', 'hotfix');
    await sleep(FAST.pollIntervalMs * 1.5);
    await a.agent.idle();
    expect((await expectServing(a, '2.0.0', 'hotfix')).lastError).toBeNull();
    expect((await stateOf(host.root)).channels.hotfixed).toBe(1);
  });
});

describe('kiln-agent status and seal', () => {
  it('status prints a table and --json a report; a tampered file shows as a modified tree', async () => {
    await promote('1.0.0', 'status');
    const a = await agent({ config: { channel: 'status' } });
    await a.agent.start();
    await a.agent.idle();
    const [table, json] = await Promise.all([kilnAgent(['status', '--root', a.root]), kilnAgent(['status', '--root', a.root, '--json'])]);
    expect(table.code, table.stderr).toBe(0);
    for (const row of [
      /^\s+web on channel status$/,
      new RegExp(`^instance\\s+${a.instanceId}$`),
      /^image\s+img-test, baked with none$/,
      new RegExp(`^installed\\s+1\\.0\\.0 \\(seq ${v1.seq}\\) via boot at \\S+$`),
      /^service\s+running$/,
      /^tree\s+ok$/,
      /^last error\s+none$/,
    ]) {
      expect(table.stdout.split('\n').some((l) => row.test(l)), `${row} in\n${table.stdout}`).toBe(true);
    }
    expect(json.code, json.stderr).toBe(0);
    const report = AgentReport.parse(JSON.parse(json.stdout));
    expect(report).toMatchObject({ instanceId: a.instanceId, installed: { version: '1.0.0', via: 'boot' }, service: { active: true }, tree: { status: 'ok' } });

    await writeFile(path.join(appLayout(a.root, 'web').current, 'server.js'), '// tampered\n');
    const after = await kilnAgent(['status', '--root', a.root]);
    expect(after.stdout).toMatch(/^tree\s+modified: 1 changed, 0 missing, 0 extra \(M server\.js\)$/m);
  });

  it('seal refuses a root with nothing installed (KILN_NOT_INSTALLED), and on an installed root records the release as baked', async () => {
    const empty = await writeAgentConfig({ s3, keys });
    const none = await kilnAgent(['seal', '--root', empty.root]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^error KILN_NOT_INSTALLED: [^\n]*\n$/);
    expect(existsSync(path.join(empty.root, 'etc/kiln/image.json'))).toBe(false);

    const host = await rebootedHost('seal', '1.0.0');
    const sealed = await kilnAgent(['seal', '--root', host.root, '--json']);
    expect(sealed.code, sealed.stderr).toBe(0);
    const marker = JSON.parse(await readFile(path.join(host.root, 'etc/kiln/image.json'), 'utf8'));
    expect(marker).toMatchObject({ schema: 1, app: 'web', release: { version: '1.0.0', seq: v1.seq } });
    expect(JSON.parse(sealed.stdout)).toEqual(marker);
    expect((await stateOf(host.root)).current).toMatchObject({ version: '1.0.0', via: 'baked' });
    // the per-instance files are gone from the image
    expect(existsSync(path.join(host.root, 'var/lib/kiln/agent/report.json'))).toBe(false);
  });
});
