// `kiln logs` and `kiln host logs`: the real `kiln` program against a real controller (buildServer on
// loopback) and a real `kiln-agent run` process, whose app writes lines when asked: the last lines,
// a follow that shows a new line within a second, the rate bound against a spamming app, Ctrl-C, the
// API's refusals; and the same output read on the host, from the supervisor's files or the journal.
import type { ChildProcess } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, createLogger, createProcessSupervisor } from '@kiln/shared';
import { servingOn, until, writeAgentConfig } from '../helpers/agent.js';
import { finished, kiln, outputHolds, startKiln, startKilnAgent } from '../helpers/cli.js';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { makeKeys, pushReleases, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

// The app: ten lines at start; `/say?text=T` prints "T at <ms since epoch>", `/spam?n=N` N lines at once.
const LOGGER_APP = `
const http = require('node:http');
for (let i = 1; i <= 10; i++) console.log('boot ' + i);
http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  if (u.pathname === '/say') console.log(u.searchParams.get('text') + ' at ' + Date.now());
  if (u.pathname === '/spam') process.stdout.write(Array.from({ length: Number(u.searchParams.get('n')) }, (_, i) => 'spam ' + i + '\\n').join(''));
  res.end('ok\\n');
}).listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;
const LOGGER_SPEC = { service: { command: ['node', 'logger.js'], port: 8080 }, health: { type: 'http', path: '/', timeoutMs: 10_000 } };

let s3: S3Fixture;
let ctl: TestController;
let agent: ChildProcess;
let agentOutput = '';
let root: string;
let port: number;
let env: Record<string, string>;
let cwd: string;

const k = (...args: string[]) => kiln(args, { cwd, env });
const start = (...args: string[]) => startKiln(args, { cwd, env });
const say = async (text: string) => expect(await (await fetch(`http://127.0.0.1:${port}/say?text=${text}`)).text()).toBe('ok\n');

beforeAll(async () => {
  s3 = await startS3();
  const keys = makeKeys();
  cwd = await tempDir('kiln-logs-cli-');
  await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable', extra: { 'logger.js': LOGGER_APP }, kilnJson: LOGGER_SPEC } });
  ctl = await startController({ s3, keys, log: createLogger({ level: 'silent' }) });
  const created = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', channel: 'stable' });
  await ctl.api('POST', '/v1/fleets', { name: 'idle', app: 'web', channel: 'idle' });
  ({ root, port } = await writeAgentConfig({ s3, keys, instanceId: 'web-1', config: { controller: { url: ctl.agentsUrl, credential: created.body.agentCredential } } }));
  agent = startKilnAgent(['run', '--root', root]);
  agent.stdout!.on('data', (d) => (agentOutput += d));
  agent.stderr!.on('data', (d) => (agentOutput += d));
  await until('web-1 connected, serving 1.0.0', async () => ctl.server.kiln.hub.get('web-1')?.report?.service.active === true && (await servingOn(port)) === 'ok\n');
  env = { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR };
}, 30_000);

afterAll(async () => {
  agent?.kill('SIGTERM');
  if (agent) await finished(agent);
  if (root) await createProcessSupervisor({ appDir: appLayout(root, 'web').appDir, log: quietLog() }).stop();
  await ctl?.close();
  await s3?.close();
});

describe('kiln logs FLEET', () => {
  it('prints the last N lines of the app on each instance as INSTANCE PROCESS | line, or JSON lines', async () => {
    for (const n of [1, 2, 3, 4, 5, 6]) await say(`mark-${n}`);
    const r = await k('logs', 'web', '--lines', '5');
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout.trimEnd().split('\n').map((l) => l.replace(/ at \d+$/, ''))).toEqual(['web-1 web | mark-2', 'web-1 web | mark-3', 'web-1 web | mark-4', 'web-1 web | mark-5', 'web-1 web | mark-6']);
    const one = await k('logs', 'web', 'web-1', '--process', 'web', '--lines', '1', '--json');
    expect(JSON.parse(one.stdout)).toEqual({ instance: 'web-1', process: 'web', line: expect.stringMatching(/^mark-6 at \d+$/) });
  });

  it('--follow shows a line the app prints within a second; Ctrl-C ends it (exit 0) and the agent stops following', async () => {
    const child = start('logs', 'web', '--follow', '--lines', '1');
    const done = finished(child);
    await outputHolds(child, 'mark-6');
    const ended = (agentOutput.match(/log stream ended/g) ?? []).length;
    let out = '';
    let seen = 0;
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      if (!seen && out.includes('live-1 at ')) seen = Date.now();
    });
    await say('live-1');
    await until('the followed line shown', () => /live-1 at \d+\n/.test(out), 5_000);
    const printedAt = Number(/web-1 web \| live-1 at (\d+)\n/.exec(out)![1]);
    const latencyMs = seen - printedAt;
    console.log(`kiln logs --follow: a line printed by the app was shown ${latencyMs} ms later`);
    expect(latencyMs).toBeLessThan(1_000);
    child.kill('SIGINT');
    const r = await done;
    expect([r.code, r.stderr]).toEqual([0, '']);
    await until('the agent ended the follow', () => (agentOutput.match(/log stream ended/g) ?? []).length > ended, 5_000);
  });

  it('a spamming app: the follow passes at most 1000 lines a second and one line says how many it skipped', async () => {
    const child = start('logs', 'web', '--follow', '--lines', '1', '--json');
    const done = finished(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    await until('the follow runs', () => out.includes('live-1'), 10_000);
    await fetch(`http://127.0.0.1:${port}/spam?n=5000`);
    // every spam line either shown or counted in a "[kiln] N lines skipped" line (one a second that dropped any)
    const count = () => {
      const whole = out.slice(0, out.lastIndexOf('\n'));
      const lines = whole ? whole.split('\n').map((l) => JSON.parse(l).line as string) : [];
      const markers = lines.map((l) => /^\[kiln\] (\d+) lines skipped: over 1000 lines/.exec(l)).filter((m) => m !== null);
      return { shown: lines.filter((l) => l.startsWith('spam ')).length, skipped: markers.reduce((n, m) => n + Number(m[1]), 0), markers: markers.length };
    };
    await until('every spam line shown or counted', () => count().shown + count().skipped === 5000, 10_000);
    child.kill('SIGINT');
    await done;
    const { shown, markers } = count();
    expect(markers).toBeGreaterThanOrEqual(1);
    expect(shown).toBeLessThanOrEqual(1000 * markers);
  });

  it('the API refuses a bad query with 400 KILN_REQUEST_INVALID, names what is missing, and the CLI says what failed', async () => {
    for (const q of ['lines=abc', 'lines=10001', 'follow=yes', 'process=Web', 'instance=..%2F', 'tail=5']) {
      const res = await ctl.api('GET', `/v1/fleets/web/logs?${q}`);
      expect([res.status, res.body.error.code], q).toEqual([400, 'KILN_REQUEST_INVALID']);
    }
    expect((await ctl.api('GET', '/v1/fleets/web/logs?lines=abc')).body.error.message).toMatch(/^the query is invalid: lines/);
    const other = await ctl.api('GET', '/v1/fleets/web/logs?instance=web-9');
    expect([other.status, other.body.error.code]).toEqual([404, 'KILN_INSTANCE_NOT_FOUND']);
    const idle = await ctl.api('GET', '/v1/fleets/idle/logs');
    expect([idle.status, idle.body.error.code]).toEqual([503, 'KILN_AGENT_NOT_CONNECTED']);
    expect((await ctl.api('GET', '/v1/fleets/nope/logs')).status).toBe(404);

    const none = await k('logs', 'idle');
    expect([none.code, none.stderr]).toEqual([1, expect.stringMatching(/^error KILN_AGENT_NOT_CONNECTED: no agent of fleet idle is connected/)]);
    const proc = await k('logs', 'web', '--process', 'mailer');
    expect([proc.code, proc.stderr]).toEqual([1, 'error KILN_PROCESS_NOT_FOUND: web-1: app web has no process mailer here: it has web\n']);
    const usage = await k('logs', 'web', '--lines', '20000');
    expect([usage.code, usage.stderr]).toEqual([2, expect.stringMatching(/^error KILN_USAGE: --lines 20000: a whole number from 0 to 10000/)]);
  });
});

describe('kiln host logs APP', () => {
  it('reads the supervisor\'s log on the host: the last lines, and a follow until Ctrl-C', async () => {
    const r = await k('host', 'logs', 'web', '--root', root, '--lines', '2');
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout.trimEnd().split('\n')).toEqual(['web | spam 4998', 'web | spam 4999']);
    const child = start('host', 'logs', 'web', '--root', root, '--follow', '--lines', '0');
    const done = finished(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    // --lines 0 prints nothing until the follow runs: the app speaks until it shows
    await until('the host follow shows a new line', async () => {
      await say('host-live');
      await sleep(200);
      return /^web \| host-live at \d+$/m.test(out);
    }, 10_000);
    child.kill('SIGINT');
    expect((await done).code).toBe(0);
  });

  it('--service-manager systemd reads the units\' journal with journalctl -u kiln-app-APP.service -o cat', async () => {
    const bin = await tempDir('kiln-fake-journal-');
    await writeFile(path.join(bin, 'journalctl'), '#!/bin/sh\necho "args: $*"\necho "from the journal"\n');
    await writeFile(path.join(bin, 'systemctl'), '#!/bin/sh\necho "kiln-app-web.service loaded active running kiln app web"\necho "kiln-app-web.worker.service loaded active running kiln app web (worker)"\n');
    await chmod(path.join(bin, 'journalctl'), 0o755);
    await chmod(path.join(bin, 'systemctl'), 0o755);
    const r = await kiln(['host', 'logs', 'web', '--root', '/', '--service-manager', 'systemd', '--lines', '4'], { cwd, env: { PATH: `${bin}:${process.env.PATH}` } });
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(r.stdout.split('\n').sort()).toEqual(
      ['', 'web | args: -u kiln-app-web.service -n 4 -o cat --no-pager', 'web | from the journal', 'worker | args: -u kiln-app-web.worker.service -n 4 -o cat --no-pager', 'worker | from the journal'].sort(),
    );
    const bad = await k('host', 'logs', 'web', '--root', root, '--service-manager', 'upstart');
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringMatching(/^error KILN_USAGE: --service-manager upstart: systemd or process/)]);
  });
});
