// The kiln CLI as a user runs it: real child processes, `kiln up` in the background, real S3.
import { execFileSync } from 'node:child_process';
import { cp, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { runCli } from '@kiln/controller';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kiln, outputHolds, startKiln, stopKiln } from '../helpers/cli.js';
import { DEMO_APP, freePort, tempDir } from '../helpers/release.js';
import type { ChildProcess } from 'node:child_process';

const COMMANDS = [
  'demo', 'up', 'keys generate', 'release push', 'release list', 'release show', 'release promote', 'release channel',
  'fleet create', 'fleet list', 'agents start', 'agents list', 'agents stop', 'deploy', 'deployments', 'deployments show', 'deployments cancel', 'status', 'drift', 'rollback', 'heal',
  'bake', 'images', 'instances', 'image base', 'agent bundle', 'agent publish',
  'host install', 'host rollback', 'host installed', 'host recover', 'host stop',
];

describe('kiln --help and usage errors', () => {
  it('lists every command, and every command has --help', async () => {
    const top = await kiln(['--help']);
    expect(top.code).toBe(0);
    for (const c of COMMANDS) expect(top.stdout).toContain(`  ${c} `);
    // Each command's help in this process: the same runCli the binary runs, without a Node start per command.
    for (const c of COMMANDS) {
      let stdout = '';
      const io = { stdout: new Writable({ write: (d, _e, cb) => ((stdout += d), cb()) }), stderr: new Writable({ write: (_d, _e, cb) => cb() }), env: {}, cwd: process.cwd() };
      expect(await runCli([...c.split(' '), '--help'], { io })).toBe(0);
      expect(stdout).toContain(`usage: kiln ${c}`);
    }
  });

  it('exits 2 with KILN_USAGE on an unknown command, an unknown option or missing arguments', async () => {
    const unknown = await kiln(['deploy-all']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^error KILN_USAGE: unknown command/);
    const group = await kiln(['release', 'pish']);
    expect(group.stderr).toContain('kiln release push');
    const opt = await kiln(['host', 'install', 'web', '--versoin', '1']);
    expect(opt.code).toBe(2);
    expect(opt.stderr).toContain('KILN_USAGE');
    const args = await kiln(['release', 'show', 'web']);
    expect(args.code).toBe(2);
    const both = await kiln(['host', 'install', 'web', '--version', '1', '--channel', 'c', '--root', '/tmp/x']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('exactly one of --version V or --channel C');
  });

  it('says how to get a bucket when there is none', async () => {
    const cwd = await tempDir();
    const r = await kiln(['release', 'list', 'web', '--trust', '/dev/null'], { cwd });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/KILN_CONFIG_INVALID.*kiln up/);
  });
});

describe('a session against `kiln up`', () => {
  let cwd: string;
  let up: ChildProcess;
  let port: number;
  const root = () => path.join(cwd, 'host');

  beforeAll(async () => {
    cwd = await tempDir('kiln-cli-');
    // Picked before the app starts: `kiln host install --port` hands it to the app.
    port = await freePort();
    up = startKiln(['up'], { cwd });
    await outputHolds(up, 'press Ctrl-C');
  });
  afterAll(async () => {
    await kiln(['host', 'stop', 'web', '--root', root()], { cwd });
    await stopKiln(up);
    await kiln(['down'], { cwd }); // HAProxy outlives kiln up: kiln down stops it
    // kiln up removes its address file when it stops
    await expect(stat(path.join(cwd, '.kiln/s3.json'))).rejects.toThrow();
  });

  async function app(version: string): Promise<string> {
    const dir = path.join(cwd, `app-${version}`);
    await cp(DEMO_APP, dir, { recursive: true });
    await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
    return dir;
  }

  it('generates keys once (0600 private key) and refuses to overwrite them', async () => {
    const r = await kiln(['keys', 'generate', '--json'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    const { privateKey, publicKey, keyId } = JSON.parse(r.stdout);
    expect(keyId).toMatch(/^[0-9a-f]{16}$/);
    expect((await stat(privateKey)).mode & 0o777).toBe(0o600);
    expect((await stat(publicKey)).mode & 0o777).toBe(0o644);
    const again = await kiln(['keys', 'generate'], { cwd });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('KILN_KEY_EXISTS');
  });

  it('pushes a directory and a tarball, lists, shows, refuses a second push of a version', async () => {
    const v1 = await kiln(['release', 'push', await app('1.0.0'), '--app', 'web', '--version', '1.0.0', '--json'], { cwd });
    expect(v1.code, v1.stderr).toBe(0);
    expect(JSON.parse(v1.stdout)).toMatchObject({ app: 'web', version: '1.0.0', seq: 1, files: 4 });

    // a tarball made by the system tar, owned by whoever made it: kiln repacks it owner-less
    const tgz = path.join(cwd, 'v2.tar.gz');
    execFileSync('tar', ['-czf', tgz, '--owner=1000', '--group=1000', '-C', await app('2.0.0'), '.']);
    const v2 = await kiln(['release', 'push', tgz, '--app', 'web', '--version', '2.0.0'], { cwd });
    expect(v2.code, v2.stderr).toBe(0);
    expect(v2.stdout).toMatch(/^published web 2\.0\.0 \(seq 2, format 2\): .*uploaded .*, skipped /);

    const dup = await kiln(['release', 'push', await app('1.0.0'), '--app', 'web', '--version', '1.0.0'], { cwd });
    expect(dup.code).toBe(1);
    expect(dup.stderr).toContain('KILN_RELEASE_EXISTS');

    const list = await kiln(['release', 'list', 'web'], { cwd });
    expect(list.stdout).toMatch(/VERSION\s+SEQ/);
    expect(list.stdout).toMatch(/1\.0\.0\s+1\s/);
    expect(list.stdout).toMatch(/2\.0\.0\s+2\s/);
    const show = JSON.parse((await kiln(['release', 'show', 'web', '2.0.0', '--json'], { cwd })).stdout);
    expect(show).toMatchObject({ version: '2.0.0', seq: 2, verified: true });
    const missing = await kiln(['release', 'show', 'web', '9.9.9'], { cwd });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('KILN_RELEASE_NOT_FOUND');
  });

  it('promotes, installs from the channel, upgrades in place and rolls back', async () => {
    const promote = await kiln(['release', 'promote', 'web', '1.0.0', '--channel', 'stable', '--ttl', '1h'], { cwd });
    expect(promote.code, promote.stderr).toBe(0);
    expect(promote.stdout).toContain('web/stable -> 1.0.0 (pointer seq 1');

    const noPrev = await kiln(['host', 'rollback', 'web', '--root', root()], { cwd });
    expect(noPrev.code).toBe(1);
    expect(noPrev.stderr).toContain('KILN_NO_PREVIOUS');

    const i1 = await kiln(['host', 'install', 'web', '--channel', 'stable', '--root', root(), '--port', String(port)], { cwd });
    expect(i1.code, i1.stderr).toBe(0);
    expect(i1.stdout).toMatch(/^installed web 1\.0\.0 in \d+ ms/);
    expect(i1.stderr).toContain('health web 1.0.0');
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toContain('1.0.0');

    const i2 = await kiln(['host', 'install', 'web', '--version', '2.0.0', '--root', root()], { cwd });
    expect(i2.code, i2.stderr).toBe(0);
    // the port given at the first install stays with the host
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toContain('2.0.0');

    const installed = JSON.parse((await kiln(['host', 'installed', 'web', '--root', root(), '--json'], { cwd })).stdout);
    expect(installed).toMatchObject({ current: { version: '2.0.0', via: 'manual' }, previous: { version: '1.0.0' }, service: { active: true } });

    const rb = await kiln(['host', 'rollback', 'web', '--root', root()], { cwd });
    expect(rb.code, rb.stderr).toBe(0);
    expect(rb.stdout).toMatch(/^rolled-back web 1\.0\.0 \(was 2\.0\.0\)/);
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toContain('1.0.0');

    const down = await kiln(['host', 'install', 'web', '--version', '1.0.0', '--root', root()], { cwd });
    expect(down.stdout).toContain('already installed');

    const stop = await kiln(['host', 'stop', 'web', '--root', root()], { cwd });
    expect(stop.code).toBe(0);
    await expect(fetch(`http://127.0.0.1:${port}/`)).rejects.toThrow();
  });
});
