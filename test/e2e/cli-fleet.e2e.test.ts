// The operator's story from the CLI alone, as real child processes: `kiln up` (controller + S3),
// a fleet of local agents, a hotfix in batches, status and drift, a rollback, and the agents stopped.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { runCli } from '@kiln/controller';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive } from '@kiln/shared';
import { until, servingOn } from '../helpers/agent.js';
import { kiln, outputHolds, startKiln, stopKiln, type CliResult } from '../helpers/cli.js';
import { gatedSpec, makeApp, tempDir, unhealthySpec } from '../helpers/release.js';

const json = (r: CliResult) => {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
};

describe('kiln without a controller', { timeout: 90_000 }, () => {
  it('says the controller is unreachable and how to start one', async () => {
    const cwd = await tempDir('kiln-nocontroller-');
    const none = await kiln(['fleet', 'list'], { cwd });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^error KILN_CONTROLLER_UNREACHABLE: .*kiln up/);
    const refused = await kiln(['status', 'web', '--json', '--controller', 'http://127.0.0.1:9', '--token', 'x'.repeat(20)], { cwd });
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout).error).toMatchObject({ code: 'KILN_CONTROLLER_UNREACHABLE', message: expect.stringContaining('ECONNREFUSED') });
  });

  it('refuses bad command lines with KILN_USAGE (exit 2) before calling anything', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['deploy', 'web'], /needs the VERSION to deploy, or --config/],
      [['deploy', 'web', '1.0.0', '--strategy', 'blue-green'], /one of hotfix, bake, relaunch/],
      [['deploy', 'web', '1.0.0', '--batch', '0%'], /--batch 0%/],
      [['deploy', 'web', '1.0.0', '--batch', 'half'], /--batch half/],
      [['deploy', 'web', '1.0.0', '--health-timeout', 'soon'], /--health-timeout soon/],
      [['rollback', 'web', '--max-failures', '-1'], /--max-failures/],
      [['fleet', 'create', 'web'], /needs --app/],
      [['agents', 'start', 'web', '--count', '0'], /--count 0/],
      [['up', '--tls-cert', 'cert.pem'], /both --tls-cert FILE and --tls-key FILE/],
      [['install', 'web', '--root', '/tmp/x'], /unknown command.*kiln host install/],
    ];
    const cwd = await tempDir('kiln-usage-');
    const results = await Promise.all(cases.map(([args]) => kiln(args, { cwd })));
    results.forEach((r, i) => {
      expect(r.code, `${cases[i]![0].join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/^error KILN_USAGE: /);
      expect(r.stderr).toMatch(cases[i]![1]);
    });
  });
});

// Every step is a CLI process of its own: generous timeouts for a busy machine.
describe('the operator story against `kiln up`', { timeout: 90_000 }, () => {
  let cwd: string;
  let up: ChildProcess;
  let agentPids: number[] = [];
  let appPids: number[] = [];
  let ports: number[] = [];
  let deploymentId: string;
  const k = (...args: string[]) => kiln(args, { cwd });

  beforeAll(async () => {
    cwd = await tempDir('kiln-fleet-');
    up = startKiln(['up'], { cwd });
    await outputHolds(up, 'press Ctrl-C');
  });
  afterAll(async () => {
    await k('agents', 'stop', 'web');
    await stopKiln(up);
    await k('down'); // HAProxy outlives kiln up: kiln down stops it
  });

  it('kiln up keeps its operator token in .kiln/controller.json (0600) and picks up keys made later', async () => {
    const file = path.join(cwd, '.kiln/controller.json');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const local = JSON.parse(await readFile(file, 'utf8'));
    expect(local).toMatchObject({ url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/), agentsUrl: expect.stringMatching(/^ws:\/\/127\.0\.0\.1:\d+\/v1\/agents$/), operatorToken: expect.any(String) });

    const keysLoaded = outputHolds(up, 'release keys changed: signing key');
    expect((await k('keys', 'generate')).code).toBe(0);
    await keysLoaded;
    expect((await k('release', 'push', await makeApp('1.0.0'), '--app', 'web', '--version', '1.0.0')).code).toBe(0);
    expect((await k('release', 'promote', 'web', '1.0.0', '--channel', 'stable')).code).toBe(0);
    expect((await k('release', 'push', await makeApp('2.0.0'), '--app', 'web', '--version', '2.0.0')).code).toBe(0);
  });

  it('creates a fleet, prints its agent credential once and saves it (0600)', async () => {
    const created = await k('fleet', 'create', 'web', '--app', 'web', '--channel', 'stable');
    expect(created.code, created.stderr).toBe(0);
    const credential = /agent credential\s+(\S+)/.exec(created.stdout)?.[1];
    const file = path.join(cwd, '.kiln/fleets/web.credential');
    expect((await readFile(file, 'utf8')).trim()).toBe(credential);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(created.stdout).toContain('desired 1.0.0');
    const again = await k('fleet', 'create', 'web', '--app', 'web');
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('KILN_FLEET_EXISTS');
    expect(json(await k('fleet', 'list', '--json'))).toEqual([expect.objectContaining({ name: 'web', app: 'web', channel: 'stable', desired: expect.objectContaining({ version: '1.0.0' }) })]);
  });

  it('starts 3 local agents that boot into 1.0.0', async () => {
    const started = json(await k('agents', 'start', 'web', '--count', '3', '--json'));
    expect(started.agents.map((a: any) => a.instanceId)).toEqual(['web-1', 'web-2', 'web-3']);
    agentPids = started.agents.map((a: any) => a.pid);
    ports = started.agents.map((a: any) => a.port);
    expect(new Set(ports).size).toBe(3);
    const config = JSON.parse(await readFile(path.join(cwd, '.kiln/agents/web-2/etc/kiln/agent.json'), 'utf8'));
    expect(config).toMatchObject({ instanceId: 'web-2', app: 'web', channel: 'stable', serviceManager: 'process', port: ports[1], controller: { url: expect.stringContaining('/v1/agents') } });

    await until('3 instances on 1.0.0', async () => {
      const s = json(await k('status', 'web', '--json'));
      return s.instances.filter((r: any) => r.connected && r.installed === '1.0.0' && r.operation === null).length === 3;
    });
    const table = await k('status', 'web');
    expect(table.stdout).toMatch(/INSTANCE\s+CONNECTED\s+IMAGE \(BAKED\)\s+DESIRED\s+INSTALLED\s+CONFIG\s+VIA\s+TREE/);
    expect(table.stdout).toMatch(/web-3\s+yes\s+local \(no release\)\s+1\.0\.0\s+1\.0\.0\s+-\s+boot\s+ok/);
    expect(table.stdout).toMatch(/^3 instances: /m);
    for (const p of ports) expect(await servingOn(p)).toContain('kiln-demo 1.0.0');
    // started again: the running ones are left alone
    const again = json(await k('agents', 'start', 'web', '--count', '3', '--json'));
    expect(again.agents.map((a: any) => [a.pid, a.started])).toEqual(agentPids.map((p) => [p, false]));
  });

  it('deploys 2.0.0 in two batches, following it in plain lines, and ends with the verdict', async () => {
    const d = await k('deploy', 'web', '2.0.0', '--batch', '50%', '--health-timeout', '20s');
    expect(d.code, d.stderr + d.stdout).toBe(0);
    const lines = d.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^deployment d-\S+: hotfix of fleet web to web 2\.0\.0 \(batch 50%/);
    expect(lines).toContain('batch 1/2: web-1 web-2');
    expect(lines).toContain('batch 2/2: web-3');
    for (const id of ['web-1', 'web-2', 'web-3']) expect(lines).toContain(`  ${id} healthy`);
    expect(lines.at(-1)).toMatch(/^deployment d-\S+ succeeded: 3 healthy on 2\.0\.0$/);
    expect(d.stdout).not.toContain('\r'); // no terminal redraws in a pipe
    deploymentId = /^deployment (d-\S+) succeeded/.exec(lines.at(-1)!)![1]!;
    for (const p of ports) expect(await servingOn(p)).toContain('kiln-demo 2.0.0');
  });

  it('shows status and drift: every instance hotfixed to 2.0.0, off its image', async () => {
    const [status, driftJson, table, listed, shown] = await Promise.all([k('status', 'web', '--json'), k('drift', 'web', '--json'), k('drift', 'web'), k('deployments', 'web', '--json'), k('deployments', 'show', deploymentId)]);
    const s = json(status);
    expect(s.fleet.desired.version).toBe('2.0.0');
    expect(s.instances.map((r: any) => [r.instanceId, r.installed, r.via, r.tree, r.drift])).toEqual(['web-1', 'web-2', 'web-3'].map((id) => [id, '2.0.0', 'hotfix', 'ok', 'off-image']));
    expect(s.summary).toMatchObject({ instances: 3, offImage: 3, drifted: 0, unreachable: 0 });
    const drift = json(driftJson);
    expect(drift.drifted.map((r: any) => r.drift)).toEqual(['off-image', 'off-image', 'off-image']);
    expect(table.stdout).toMatch(/INSTANCE\s+DRIFT\s+IMAGE \(BAKED\)\s+DESIRED\s+INSTALLED\s+CONFIG\s+VIA\s+TREE/);
    expect(table.stdout).toMatch(/web-1\s+off-image\s+local \(no release\)\s+2\.0\.0\s+2\.0\.0\s+-\s+hotfix\s+ok/);
    expect(table.stdout.trim().split('\n').at(-1)).toBe(s.summary.line);

    const list = json(listed);
    expect(list.map((x: any) => [x.id, x.state])).toEqual([[deploymentId, 'succeeded']]);
    expect(shown.stdout).toMatch(/web-3\s+2\s+healthy/);

    // On a terminal, following draws a status line in place (the same runCli as the binary, here with a TTY stdout).
    let screen = '';
    const tty = Object.assign(new Writable({ write: (d, _e, cb) => ((screen += d), cb()) }), { isTTY: true, columns: 120 });
    const io = { stdout: tty, stderr: new Writable({ write: (_d, _e, cb) => cb() }), env: {}, cwd };
    expect(await runCli(['deployments', 'show', deploymentId, '--follow'], { io })).toBe(0);
    expect(screen).toContain('\r\x1b[Kbatch 2/2  healthy 3/3, failed 0, in flight 0, pending 0');
    expect(screen).toMatch(/succeeded: 3 healthy on 2\.0\.0\n$/);
  });

  it('rolls the fleet back to 1.0.0 and follows it (--json prints the final record)', async () => {
    const rb = await k('rollback', 'web', '--batch', '100%', '--json');
    expect(rb.code, rb.stderr).toBe(0);
    expect(JSON.parse(rb.stdout)).toMatchObject({ kind: 'rollback', state: 'succeeded', release: { version: '1.0.0' }, previous: { version: '2.0.0' } });
    expect(rb.stderr).toContain('batch 1/1: web-1 web-2 web-3');
    const s = json(await k('status', 'web', '--json'));
    expect(s.instances.map((r: any) => [r.installed, r.via])).toEqual(Array(3).fill(['1.0.0', 'rollback']));
    for (const p of ports) expect(await servingOn(p)).toContain('kiln-demo 1.0.0');
    const channel = await k('release', 'channel', 'web', 'stable');
    expect(channel.stdout).toContain('web/stable -> 1.0.0');
  });

  it('refuses with the API\'s codes: a wrong or an agent token, an unknown fleet, version or deployment', async () => {
    const credential = (await readFile(path.join(cwd, '.kiln/fleets/web.credential'), 'utf8')).trim();
    const notFound = [['status', 'nope'], ['drift', 'nope'], ['deploy', 'nope', '2.0.0'], ['rollback', 'nope'], ['deployments', 'nope']];
    const [badToken, agentToken, noVersion, noDeployment, ...unknown] = await Promise.all([
      k('fleet', 'list', '--token', 'not-the-operator-token'),
      k('fleet', 'list', '--json', '--token', credential),
      k('deploy', 'web', '9.9.9'),
      k('deployments', 'show', 'd-nope-000000'),
      ...notFound.map((args) => k(...args)),
    ]);
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toMatch(/^error KILN_UNAUTHORIZED: /);
    expect(JSON.parse(agentToken!.stdout).error.code).toBe('KILN_FORBIDDEN');
    expect(noVersion!.stderr).toMatch(/^error KILN_RELEASE_NOT_FOUND: /);
    expect(noDeployment!.stderr).toMatch(/^error KILN_DEPLOYMENT_NOT_FOUND: /);
    unknown.forEach((r, i) => {
      expect(r.code, notFound[i]!.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^error KILN_FLEET_NOT_FOUND: /);
    });

  });

  it('one deployment per fleet at a time; a cancelled or failed one ends the CLI with exit 1 and its code', async () => {
    // 3.0.0 turns healthy only once the test opens the gate: its deployment is held in batch 1 meanwhile.
    const gate = path.join(cwd, 'gate');
    const held = await makeApp('3.0.0', {}, gatedSpec(gate));
    const failing = await makeApp('4.0.0', {}, unhealthySpec(500));
    expect((await k('release', 'push', held, '--app', 'web', '--version', '3.0.0')).code).toBe(0);
    expect((await k('release', 'push', failing, '--app', 'web', '--version', '4.0.0')).code).toBe(0);

    const started = json(await k('deploy', 'web', '3.0.0', '--batch', '1', '--no-wait', '--json'));
    expect(started).toMatchObject({ state: 'running', release: { version: '3.0.0' } });
    const busy = await k('deploy', 'web', '2.0.0');
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/^error KILN_FLEET_BUSY: /);
    expect((await k('deployments', 'cancel', started.id)).stdout).toMatch(/^cancel requested: .* stops after the batch in flight/);
    await writeFile(gate, '');
    const cancelled = await k('deployments', 'show', started.id, '--follow');
    expect(cancelled.code).toBe(1);
    expect(cancelled.stdout).toMatch(/cancelled before batch 2 of 3: 1 instance\(s\) stay on 3.0.0, the channel points to 1.0.0 again\n$/);
    expect(cancelled.stderr).toMatch(/^error KILN_DEPLOY_CANCELLED: /);

    const failed = await k('deploy', 'web', '4.0.0', '--batch', '1');
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^ {2}web-1 failed: KILN_HEALTH_FAILED /m);
    expect(failed.stdout).toMatch(/^ {2}web-1 rolled back/m);
    expect(failed.stdout).toMatch(/failed: 1 instance\(s\) failed in batch 1 of 3, over the limit of 0; touched instances rolled back to 1\.0\.0\n$/);
    expect(failed.stderr).toMatch(/^error KILN_DEPLOY_FAILED: /);
    expect(await servingOn(ports[0]!)).toContain('kiln-demo 1.0.0');
  });

  it('stops the agents and their apps: nothing of theirs is left running', async () => {
    appPids = await Promise.all(
      ['web-1', 'web-2', 'web-3'].map(async (id) => json(await k('host', 'installed', 'web', '--root', path.join(cwd, '.kiln/agents', id), '--json')).service.pid as number),
    );
    expect(appPids.every((p) => isAlive(p))).toBe(true);
    const stopped = await k('agents', 'stop', 'web');
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stdout).toMatch(/^web-1: agent stopped \(pid \d+\), app stopped$/m);
    for (const pid of [...agentPids, ...appPids]) expect(isAlive(pid), `pid ${pid}`).toBe(false);
    for (const p of ports) expect(await servingOn(p)).toBeUndefined();
    expect(json(await k('agents', 'list', '--json'))).toEqual([]);
    expect((await k('agents', 'stop', 'web')).stdout).toContain('no local agents of fleet web');
  });

  it('stops kiln up cleanly on SIGTERM; the CLI then says the controller is unreachable', async () => {
    expect(await stopKiln(up)).toBe(0);
    await expect(stat(path.join(cwd, '.kiln/s3.json'))).rejects.toThrow();
    const down = await k('fleet', 'list');
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^error KILN_CONTROLLER_UNREACHABLE: .*kiln up/);
  });
});

describe('kiln up with TLS', { timeout: 90_000 }, () => {
  it('serves https and wss with the given certificate; the CLI and local agents trust it', async () => {
    const cwd = await tempDir('kiln-tls-');
    const cert = path.join(cwd, 'cert.pem');
    const key = path.join(cwd, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    expect((await kiln(['keys', 'generate'], { cwd })).code).toBe(0);
    const up = startKiln(['up', '--tls-cert', cert, '--tls-key', key], { cwd });
    try {
      const banner = await outputHolds(up, 'press Ctrl-C');
      expect(banner).toMatch(/kiln controller\s+https:\/\/127\.0\.0\.1:\d+/);
      expect(banner).toMatch(/agents connect to wss:\/\/127\.0\.0\.1:\d+\/v1\/agents/);
      expect((await kiln(['fleet', 'create', 'api', '--app', 'web'], { cwd })).code).toBe(0);
      const started = await kiln(['agents', 'start', 'api', '--connect-timeout', '20'], { cwd });
      expect(started.code, started.stderr).toBe(0);
      expect(json(await kiln(['status', 'api', '--json'], { cwd })).instances).toEqual([expect.objectContaining({ instanceId: 'api-1', connected: true })]);
    } finally {
      await kiln(['agents', 'stop', 'api'], { cwd });
      await stopKiln(up);
      await kiln(['down'], { cwd });
    }
  });
});
