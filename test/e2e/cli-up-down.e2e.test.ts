// `kiln up` and `kiln down` as an operator runs them, as real child processes in one directory:
// a restarted `kiln up` listens where the last one did (agents and instances started before find it
// again), a second one names the first, `kiln down` stops everything `kiln up` started and
// `kiln down --wipe` leaves nothing, and `kiln fleet delete` takes a fleet's local agents with it.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive } from '@kiln/shared';
import { servingOn, until } from '../helpers/agent.js';
import { kiln, outputHolds, startKiln, stopKiln, type CliResult } from '../helpers/cli.js';
import { makeApp, tempDir } from '../helpers/release.js';

const json = (r: CliResult) => {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
};

const exited = (child: ChildProcess) => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve(child.exitCode) : new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))));

/** Holds 127.0.0.1:port (another program on the port) until released; it hangs up on whoever calls (agents retrying), so it can close. */
async function holdPort(port: number): Promise<() => Promise<void>> {
  const srv = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(port, '127.0.0.1', resolve));
  return () => new Promise((resolve) => srv.close(() => resolve()));
}

describe('kiln up and kiln down in one directory', { timeout: 120_000 }, () => {
  let cwd: string;
  let up: ChildProcess;
  let banner: string;
  const k = (...args: string[]) => kiln(args, { cwd });
  const home = () => path.join(cwd, '.kiln');
  const pidOf = async (instanceId: string) => JSON.parse(await readFile(path.join(home(), 'process/instances', instanceId, 'instance.json'), 'utf8')).pid as number;
  const appPid = async (root: string) => json(await k('host', 'installed', 'web', '--root', root, '--json')).service.pid as number;

  beforeAll(async () => {
    cwd = await tempDir('kiln-up-down-');
    up = startKiln(['up'], { cwd });
    banner = await outputHolds(up, 'press Ctrl-C');
  });
  afterAll(async () => {
    await k('down');
    await stopKiln(up);
  });

  it('kiln up restarted on new random ports, stranding every agent: it listens on the ports recorded in .kiln, says so, and agents started before reconnect', async () => {
    expect(banner).toMatch(/^ports\s+controller \d+, S3 \d+ \(free ones\); recorded in .*up\.json: the next kiln up here listens on the same$/m);
    const keysLoaded = outputHolds(up, 'release keys changed: signing key');
    expect((await k('keys', 'generate')).code).toBe(0);
    await keysLoaded;
    expect((await k('release', 'push', await makeApp('1.0.0'), '--app', 'web', '--version', '1.0.0')).code).toBe(0);
    expect((await k('release', 'promote', 'web', '1.0.0', '--channel', 'stable')).code).toBe(0);
    expect((await k('fleet', 'create', 'web', '--app', 'web', '--channel', 'stable')).code).toBe(0);
    const started = json(await k('agents', 'start', 'web', '--count', '2', '--json'));
    const agentPids = started.agents.map((a: any) => a.pid);

    expect(await stopKiln(up)).toBe(0);
    up = startKiln(['up'], { cwd });
    const again = await outputHolds(up, 'press Ctrl-C');
    const controller = (text: string) => /^kiln controller\s+(\S+)$/m.exec(text)?.[1];
    const s3 = (text: string) => /^S3 endpoint\s+(\S+)$/m.exec(text)?.[1];
    expect([controller(again), s3(again)]).toEqual([controller(banner), s3(banner)]);
    expect(again).toMatch(/^ports\s+controller \d+, S3 \d+: the last kiln up's here, so agents and instances started before reconnect$/m);
    // The same agent processes, not restarted: they found the controller where they left it.
    await until('both agents connected again', async () => json(await k('status', 'web', '--json')).instances.filter((r: any) => r.connected && r.installed === '1.0.0').length === 2, 30_000);
    expect(json(await k('agents', 'list', '--json')).map((a: any) => a.pid)).toEqual(agentPids);
  });

  it('kiln up run twice said only "stop it first": it names the running one\'s pid and `kiln down`', async () => {
    const twice = await k('up');
    expect(twice.code).toBe(1);
    expect(twice.stderr).toMatch(new RegExp(`^error KILN_ALREADY_RUNNING: kiln up already runs for .*: pid ${up.pid}, controller http://127\\.0\\.0\\.1:\\d+; stop it with \`kiln down\``));
  });

  it('kiln fleet delete takes the fleet\'s local agents and saved credential with it; a fleet of the same name starts empty', async () => {
    const agents = json(await k('agents', 'list', '--json'));
    const apps = await Promise.all(agents.map((a: any) => appPid(a.root)));
    const del = await k('fleet', 'delete', 'web');
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout).toMatch(/^local agents stopped\s+web-1 web-2$/m);
    for (const pid of [...agents.map((a: any) => a.pid), ...apps]) expect(isAlive(pid), `pid ${pid}`).toBe(false);
    await expect(stat(path.join(home(), 'fleets/web.credential'))).rejects.toThrow();
    expect(json(await k('agents', 'list', '--json'))).toEqual([]);
    expect((await k('fleet', 'create', 'web', '--app', 'web', '--channel', 'stable')).code).toBe(0);
    expect(json(await k('status', 'web', '--json')).instances).toEqual([]);
  });

  it('nothing stopped what kiln up started: kiln down stops kiln up, its process instances and the local agents by their recorded pids; kiln up starts the instances again', async () => {
    expect((await k('fleet', 'create', 'shop', '--app', 'web', '--channel', 'shop', '--provider', 'process', '--size', '1')).code).toBe(0);
    const d = await k('deploy', 'shop', '1.0.0', '--strategy', 'relaunch');
    expect(d.code, d.stderr + d.stdout).toBe(0);
    const [inst] = json(await k('instances', '--json'));
    const instancePids = [await pidOf(inst.id), await appPid(path.join(home(), 'process/instances', inst.id, 'root'))];
    const [agent] = json(await k('agents', 'start', 'web', '--json')).agents;
    const agentPids = [agent.pid, await appPid(agent.root)];
    const upPid = up.pid!;

    const down = await k('down');
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(new RegExp(`^kiln up \\(pid ${upPid}\\): stopped; the controller \\(port \\d+\\) and S3 \\(port \\d+\\) are down$`, 'm'));
    expect(down.stdout).toMatch(new RegExp(`^process instances: 1 stopped \\(${inst.id}\\); the next \`kiln up\` here starts them again$`, 'm'));
    expect(down.stdout).toMatch(/^local agents of web: web-1 stopped; `kiln agents start web --count 1` starts them again once kiln up runs$/m);
    expect(await exited(up)).toBe(0);
    for (const pid of [...instancePids, ...agentPids]) expect(isAlive(pid), `pid ${pid}`).toBe(false);
    expect(await servingOn(agent.port)).toBeUndefined();
    expect((await k('fleet', 'list')).stderr).toMatch(/^error KILN_CONTROLLER_UNREACHABLE: /);

    up = startKiln(['up'], { cwd });
    expect(await outputHolds(up, 'started again')).toMatch(new RegExp(`^started again\\s+1 instance\\(s\\) \`kiln down\` stopped: ${inst.id}$`, 'm'));
    await until('the instance connected again', async () => json(await k('status', 'shop', '--json')).instances.some((r: any) => r.instanceId === inst.id && r.connected && r.installed === '1.0.0'), 60_000);
  });

  it('a recorded port another process holds: KILN_PORT_IN_USE, saying what it means for what runs and what to do', async () => {
    expect((await k('down')).code).toBe(0);
    const { port } = JSON.parse(await readFile(path.join(home(), 'up.json'), 'utf8'));
    const release = await holdPort(port);
    try {
      const taken = await k('up');
      expect(taken.code, taken.stderr + taken.stdout).toBe(1);
      expect(taken.stderr).toMatch(new RegExp(`^error KILN_PORT_IN_USE: port ${port}, the controller's at the last kiln up here .* is taken by another process.*pass --port 0 for a free port`));
    } finally {
      await release();
    }
  });

  it('kiln down --wipe removes the kiln directory after stopping everything; it refuses a directory kiln did not make', async () => {
    const refused = await k('down', '--wipe', '--home', cwd);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^error KILN_USAGE: --wipe: .* does not look like a kiln directory/);
    // a project of the user's with folders named as kiln's (keys/, s3/) is not a kiln directory
    const project = await tempDir('kiln-not-kiln-');
    await mkdir(path.join(project, 'keys'));
    await mkdir(path.join(project, 's3'));
    const foreign = await k('down', '--wipe', '--home', project);
    expect([foreign.code, foreign.stderr]).toEqual([2, expect.stringMatching(/^error KILN_USAGE: --wipe: .* does not look like a kiln directory/)]);
    expect((await stat(path.join(project, 'keys'))).isDirectory()).toBe(true);
    // nor a directory that holds the working directory, though kiln up ran in it
    await writeFile(path.join(cwd, 'up.json'), '{}');
    const parent = await kiln(['down', '--wipe', '--home', '..'], { cwd: home() });
    expect([parent.code, parent.stderr]).toEqual([2, expect.stringMatching(/^error KILN_USAGE: --wipe: .* holds the working directory or your home/)]);
    expect((await stat(home())).isDirectory()).toBe(true);
    await rm(path.join(cwd, 'up.json'));
    up = startKiln(['up'], { cwd });
    await outputHolds(up, 'press Ctrl-C');
    const wiped = await k('down', '--wipe');
    expect(wiped.code, wiped.stderr).toBe(0);
    expect(wiped.stdout).toMatch(new RegExp(`^removed ${home()}$`, 'm'));
    expect(await exited(up)).toBe(0);
    await expect(stat(home())).rejects.toThrow();
  });
});

describe('kiln down and a pid that is no longer kiln up', () => {
  it('signals only the process kiln up recorded: a pid reused by another process, or a pid of -1 or 0, is left alone', async () => {
    const cwd = await tempDir('kiln-down-pid-');
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const home = path.join(cwd, '.kiln');
      await kiln(['keys', 'generate'], { cwd });
      await writeFile(path.join(home, 'up.json'), JSON.stringify({ pid: other.pid, start: '1', port: 9, s3Port: 9, provider: 'process', startedAt: new Date().toISOString() }));
      const down = await kiln(['down'], { cwd });
      expect(down.code, down.stderr).toBe(0);
      expect(down.stdout).toMatch(/^kiln up: not running for /);
      expect(isAlive(other.pid)).toBe(true);
      // a pid of -1 (every process of the user to kill) or 0 (the process group) is no record at all
      for (const pid of [-1, 0]) {
        await writeFile(path.join(home, 'up.json'), JSON.stringify({ pid, start: null, port: 9, s3Port: 9, provider: 'process', startedAt: new Date().toISOString() }));
        const r = await kiln(['down'], { cwd });
        expect([r.code, r.stdout.split('\n')[0]], r.stderr).toEqual([0, `kiln up: not running for ${home}`]);
        expect(isAlive(other.pid)).toBe(true);
      }
    } finally {
      other.kill();
    }
  });
});
