import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive, isKilnError, pollUntil } from '@kiln/shared';
import {
  BASE_ROOTFS_RECIPE,
  bootMachine,
  createMachineGroup,
  ensureBaseRootfs,
  kilnCacheDir,
  mirrorFromAptSources,
  nspawnHostProblem,
  type Machine,
} from '@kiln/controller';
import { freePort, quietLog, tempDir } from '../helpers/release.js';

const problem = nspawnHostProblem();
const log = quietLog();
const controllerDist = new URL('../../packages/controller/dist/index.js', import.meta.url).href;
const sharedDist = new URL('../../packages/shared/dist/index.js', import.meta.url).href;

/** Live (non-zombie) processes whose command line names the machine. */
function processesOf(name: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmdline.includes(`--machine=${name}`) && isAlive(Number(entry))) found.push(Number(entry));
    } catch {
      // gone
    }
  }
  return found;
}

/** Processes, in any mount namespace, that still see a mount of `dir` (an overlay names its upper dir). */
function mountedAnywhere(dir: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/mountinfo`, 'utf8').includes(dir)) found.push(Number(entry));
    } catch {
      // gone
    }
  }
  return found;
}

const waitFor = <T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 10_000) =>
  pollUntil({ check, timeoutMs, intervalMs: 50, timeoutError: () => new Error(`timed out waiting for ${what}`) });

async function get(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
  return res.text();
}

/** A unit running a node HTTP server that answers with the machine's host name. */
async function installHello(m: Machine, port: number, unit = 'hello'): Promise<void> {
  await mkdir(`${m.root}/opt`, { recursive: true });
  await writeFile(`${m.root}/opt/hello.js`, `require('node:http').createServer((q, s) => s.end(require('node:os').hostname())).listen(${port}, '127.0.0.1');\n`);
  await writeFile(
    `${m.root}/etc/systemd/system/${unit}.service`,
    `[Unit]\nDescription=hello\n\n[Service]\nExecStart=/usr/bin/node /opt/hello.js\nRestart=always\nRestartSec=100ms\n\n[Install]\nWantedBy=multi-user.target\n`,
  );
  expect((await m.systemctl('daemon-reload')).code).toBe(0);
  const r = await m.systemctl('start', `${unit}.service`);
  expect(r.code, r.stderr).toBe(0);
  await m.waitUnitActive(`${unit}.service`, 5_000);
}

async function mainPid(m: Machine, unit: string): Promise<number> {
  return Number((await m.systemctl('show', '-p', 'MainPID', '--value', unit)).stdout.trim());
}

describe('apt sources', () => {
  it('finds the mirror serving bookworm in deb822 and one-line sources, not the security one', () => {
    const deb822 = 'Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n';
    expect(mirrorFromAptSources(deb822, 'bookworm')).toBe('http://mirror.example/debian');
    expect(mirrorFromAptSources('# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://one.example/debian bookworm main\n', 'bookworm')).toBe('http://one.example/debian');
    expect(mirrorFromAptSources('deb http://security.example/ bookworm-security main\n', 'bookworm')).toBeNull();
  });
});

describe.skipIf(problem !== null)(`nspawn machines${problem ? ` (skipped: ${problem})` : ''}`, () => {
  const group = createMachineGroup();
  let image = '';
  let work = '';

  const cacheDir = kilnCacheDir(process.env.KILN_CACHE_DIR);
  let firstMs = 0;

  // The first build runs debootstrap (about a minute); every later run finds the tree cached.
  beforeAll(async () => {
    work = await tempDir('kiln-nspawn-');
    const t = Date.now();
    image = await ensureBaseRootfs({ cacheDir, log });
    firstMs = Date.now() - t;
  }, 15 * 60_000);
  afterAll(async () => {
    await group.cleanupAll();
  });

  const boot = (name: string, extra: { upperDir?: string; binds?: { host: string; container: string; readOnly?: boolean }[] } = {}) =>
    group.boot({ image, upperDir: extra.upperDir ?? path.join(work, name, 'upper'), name, log, bootTimeoutMs: 15_000, ...(extra.binds ? { binds: extra.binds } : {}) });

  it('builds the base root filesystem once, prepared to boot fast, and reuses it', async () => {
    log.info({ firstMs }, 'base root filesystem ready');
    const t = Date.now();
    expect(await ensureBaseRootfs({ cacheDir, log })).toBe(image);
    expect(Date.now() - t).toBeLessThan(1_000);
    expect(await readFile(path.join(image, 'etc/machine-id'), 'utf8')).toBe('');
    expect(await readlink(path.join(image, 'var/lib/dbus/machine-id'))).toBe('/etc/machine-id');
    expect(existsSync(path.join(image, 'etc/hostname'))).toBe(false);
    expect((await stat(path.join(image, 'usr/bin/node'))).isFile()).toBe(true);
    expect(await readlink(path.join(image, 'etc/systemd/system/console-getty.service'))).toBe('/dev/null');
    expect(await readlink(path.join(image, 'etc/systemd/system/apt-daily.timer'))).toBe('/dev/null');
  });

  it('concurrent callers wait for one build; a failed or interrupted build leaves no tree that looks complete', async () => {
    const cacheDir = path.join(work, 'cache');
    const fake = path.join(work, 'fake-debootstrap');
    const runs = path.join(work, 'fake-runs');
    // Stands in for debootstrap: the target is the 4th argument; FAIL makes it die half-way.
    await writeFile(
      fake,
      `#!/bin/sh\necho run >> ${runs}\nt=$4\nmkdir -p $t/etc/systemd/system/multi-user.target.wants $t/usr/lib/systemd $t/usr/bin $t/var/cache/apt $t/var/lib/dbus\necho "I: Unpacking"\nsleep 0.5\n[ -e ${work}/FAIL ] && { echo "E: broken" >&2; exit 1; }\n: > $t/usr/lib/systemd/systemd\necho ID=debian > $t/etc/os-release\necho vm > $t/etc/hostname\n`,
    );
    await chmod(fake, 0o755);
    await writeFile(path.join(work, 'FAIL'), '');
    const failed = await ensureBaseRootfs({ cacheDir, log, debootstrap: fake, mirror: 'http://mirror.invalid/debian' }).catch((e: unknown) => e);
    expect(isKilnError(failed, 'KILN_BASE_IMAGE_FAILED'), String(failed)).toBe(true);
    expect(String((failed as Error).message)).toContain('E: broken');
    expect(await readdir(cacheDir)).toEqual([]);

    // An interrupted build (its process killed) leaves its temporary tree: the next build removes it.
    await mkdir(path.join(cacheDir, `${BASE_ROOTFS_RECIPE}.kiln-tmp-1-dead/usr`), { recursive: true });
    await rm(path.join(work, 'FAIL'));
    const progress: string[] = [];
    const [a, b] = await Promise.all([
      ensureBaseRootfs({ cacheDir, log, debootstrap: fake, mirror: 'http://mirror.invalid/debian', onProgress: (m) => progress.push(m) }),
      ensureBaseRootfs({ cacheDir, log, debootstrap: fake, mirror: 'http://mirror.invalid/debian', onProgress: (m) => progress.push(m) }),
    ]);
    expect(a).toBe(b);
    expect((await readFile(runs, 'utf8')).trim().split('\n')).toHaveLength(2); // the failed run and one build
    expect(progress).toEqual(['Unpacking']);
    expect((await readdir(cacheDir)).sort()).toEqual([BASE_ROOTFS_RECIPE]);
    expect(existsSync(path.join(a, 'etc/hostname'))).toBe(false);
  });

  it('boots to running within a second or so, with its own host name and machine id', async () => {
    const t = Date.now();
    const [m1, m2] = await Promise.all([boot('kiln-boot-a'), boot('kiln-boot-b')]);
    const bootMs = Date.now() - t;
    expect(bootMs).toBeLessThan(8_000);
    for (const m of [m1!, m2!]) {
      expect(['running', 'degraded']).toContain((await m.systemctl('is-system-running')).stdout.trim());
      expect((await m.exec(['hostname'])).stdout.trim()).toBe(m.name);
      expect((await m.exec(['cat', '/proc/1/comm'])).stdout.trim()).toBe('systemd');
    }
    const ids = await Promise.all([m1!, m2!].map(async (m) => (await m.exec(['cat', '/etc/machine-id'])).stdout.trim()));
    expect(ids[0]).toMatch(/^[0-9a-f]{32}$/);
    expect(ids[0]).not.toBe(ids[1]);
    await Promise.all([m1!.poweroff(), m2!.poweroff()]);
  });

  it('a unit serves HTTP on a host port and systemd restarts it after kill -9', async () => {
    const m = await boot('kiln-restart');
    // Picked before the unit starts: its script listens on it, again after systemd restarts it (the machine shares the host's network).
    const port = await freePort();
    await installHello(m, port);
    expect(await waitFor('the app to answer', () => get(port).catch(() => undefined))).toBe('kiln-restart');
    const first = await mainPid(m, 'hello.service');
    expect(first).toBeGreaterThan(1);
    expect((await m.exec(['sh', '-c', `kill -9 ${first}`])).code).toBe(0); // minbase has no procps: the shell's kill
    const second = await waitFor('a new MainPID', async () => {
      const p = await mainPid(m, 'hello.service');
      return p > 1 && p !== first ? p : undefined;
    });
    expect(second).not.toBe(first);
    expect((await m.systemctl('show', '-p', 'NRestarts', '--value', 'hello.service')).stdout.trim()).toBe('1');
    expect(await waitFor('the app to answer again', () => get(port).catch(() => undefined))).toBe('kiln-restart');
    await m.poweroff();
  });

  // Regression: every nspawn started from one cgroup put its container in the same `payload`
  // cgroup, so the same unit in two machines shared one cgroup; the machines' systemds then failed
  // to kill their unit's control group ("Input/output error") and lost track of its processes.
  it('two machines get their own cgroups, so the same unit in both is not one cgroup', async () => {
    const [a, b] = await Promise.all([boot('kiln-share-a'), boot('kiln-share-b')]);
    const hostCgroup = (m: Machine) => readFileSync(`/proc/${m.pid1}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
    expect(hostCgroup(a!)).toBeTruthy();
    expect(hostCgroup(a!)).not.toBe(hostCgroup(b!));
    // Picked before the units start: each one's script listens on its own (the machines share the host's network).
    const [pa, pb] = [await freePort(), await freePort()];
    await installHello(a!, pa);
    await installHello(b!, pb);
    expect(await waitFor('b to answer', () => get(pb).catch(() => undefined))).toBe('kiln-share-b');
    expect((await a!.systemctl('stop', 'hello.service')).code).toBe(0);
    await a!.exec(['journalctl', '--sync']);
    const journal = await a!.exec(['journalctl', '-u', 'hello.service', '--no-pager', '-o', 'cat']);
    expect(journal.stdout).toContain('Stopped');
    expect(journal.stdout).not.toMatch(/Failed to kill control group/);
    expect((await b!.systemctl('is-active', 'hello.service')).stdout.trim()).toBe('active');
    expect(await get(pb)).toBe('kiln-share-b');
    await Promise.all([a!.poweroff(), b!.poweroff()]);
  });

  it('binds a host directory read-only, and node runs from the host', async () => {
    const repo = path.join(work, 'repo');
    await mkdir(repo, { recursive: true });
    await writeFile(path.join(repo, 'hello.txt'), 'from the host\n');
    const m = await boot('kiln-bind', { binds: [{ host: repo, container: '/opt/repo', readOnly: true }] });
    expect((await m.exec(['cat', '/opt/repo/hello.txt'])).stdout).toBe('from the host\n');
    const w = await m.exec(['sh', '-c', 'echo x > /opt/repo/written']);
    expect(w.code).not.toBe(0);
    expect(w.stderr).toMatch(/Read-only file system/);
    expect(existsSync(path.join(repo, 'written'))).toBe(false);
    expect((await m.exec(['node', '-p', 'process.version'])).stdout.trim()).toBe(process.version);
    await m.poweroff();
  });

  it('writes go to the upper layer, never the image; they persist across a reboot; poweroff leaves nothing behind', async () => {
    const before = await Promise.all(['etc', 'root', 'usr/local/bin', 'etc/os-release', 'usr/bin/node'].map(async (p) => {
      const s = await lstat(path.join(image, p));
      return `${p} ${s.mtimeMs} ${s.size} ${s.mode}`;
    }));
    const upperDir = path.join(work, 'persist', 'upper');
    const m = await boot('kiln-persist', { upperDir });
    const w = await m.exec(['sh', '-c', 'echo one > /root/note && echo tool > /usr/local/bin/tool && rm /etc/os-release && chmod 700 /root']);
    expect(w.code, w.stderr).toBe(0);
    expect(existsSync(path.join(image, 'root/note'))).toBe(false);
    expect(existsSync(path.join(image, 'usr/local/bin/tool'))).toBe(false);
    expect(existsSync(path.join(image, 'etc/os-release'))).toBe(true);
    const twice = await bootMachine({ image, upperDir, name: 'kiln-persist-2', log, bootTimeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(isKilnError(twice, 'KILN_MACHINE_FAILED'), String(twice)).toBe(true);
    expect(String((twice as Error).message)).toContain('in use');

    const t = Date.now();
    const exit = await m.poweroff();
    expect(exit.code).toBe(0);
    expect(Date.now() - t).toBeLessThan(5_000);
    expect(processesOf(m.name)).toEqual([]);
    expect(isAlive(m.pid) || isAlive(m.pid1)).toBe(false);
    expect(mountedAnywhere(upperDir)).toEqual([]);
    expect(await readFile(path.join(upperDir, 'root/note'), 'utf8')).toBe('one\n');
    const after = await Promise.all(['etc', 'root', 'usr/local/bin', 'etc/os-release', 'usr/bin/node'].map(async (p) => {
      const s = await lstat(path.join(image, p));
      return `${p} ${s.mtimeMs} ${s.size} ${s.mode}`;
    }));
    expect(after).toEqual(before);

    const again = await boot('kiln-persist', { upperDir });
    expect((await again.exec(['cat', '/root/note'])).stdout).toBe('one\n');
    expect((await again.exec(['test', '-e', '/etc/os-release'])).code).toBe(1);
    await again.poweroff();
  });

  it('kill pulls the plug: the machine and everything in it are gone, and the same instance boots again', async () => {
    const upperDir = path.join(work, 'plug', 'upper');
    const m = await boot('kiln-plug', { upperDir });
    await m.exec(['sh', '-c', 'echo before > /root/before && sync']);
    const inside = await m.exec(['sh', '-c', 'sleep 1000 >/dev/null 2>&1 & echo $!']);
    expect(inside.code).toBe(0);
    const exit = await m.kill();
    expect(exit.signal ?? exit.code).toBeTruthy(); // not a clean exit 0
    expect(processesOf(m.name)).toEqual([]);
    // The kernel tears the machine's PID 1 down right after nspawn's exit, not before it: a moment on a busy machine.
    await pollUntil({ check: () => !isAlive(m.pid1), timeoutMs: 5_000 });
    expect(mountedAnywhere(upperDir)).toEqual([]);
    const again = await boot('kiln-plug', { upperDir });
    expect((await again.exec(['cat', '/root/before'])).stdout).toBe('before\n');
    await again.poweroff();
  });

  it('a boot past its deadline throws KILN_BOOT_TIMEOUT and leaves no process or mount', async () => {
    // A unit in the instance's layer that holds the boot up for a minute: the deadline hits while
    // the machine's systemd and its processes run.
    const upperDir = path.join(work, 'slow', 'upper');
    const units = path.join(upperDir, 'etc/systemd/system');
    await mkdir(path.join(units, 'multi-user.target.wants'), { recursive: true });
    await writeFile(path.join(units, 'slow.service'), '[Service]\nType=oneshot\nExecStart=/bin/sleep 60\n\n[Install]\nWantedBy=multi-user.target\n');
    await symlink('../slow.service', path.join(units, 'multi-user.target.wants/slow.service'));
    const t = Date.now();
    const err = await bootMachine({ image, upperDir, name: 'kiln-slow', log, bootTimeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(isKilnError(err, 'KILN_BOOT_TIMEOUT'), String(err)).toBe(true);
    expect(Date.now() - t).toBeLessThan(8_000);
    expect(processesOf('kiln-slow')).toEqual([]);
    expect(mountedAnywhere(upperDir)).toEqual([]);
  });

  it('refuses an image without systemd and a bad machine name', async () => {
    const empty = await tempDir('kiln-empty-image-');
    const noImage = await bootMachine({ image: empty, upperDir: path.join(work, 'x', 'upper'), name: 'kiln-x', log, bootTimeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(isKilnError(noImage, 'KILN_BASE_IMAGE_MISSING'), String(noImage)).toBe(true);
    const badName = await bootMachine({ image, upperDir: path.join(work, 'y', 'upper'), name: 'a/b', log, bootTimeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(isKilnError(badName, 'KILN_NAME_INVALID'), String(badName)).toBe(true);
  });

  it('a machine dies with the process that booted it, even when that process is SIGKILLed', async () => {
    const upperDir = path.join(work, 'orphan', 'upper');
    const script = path.join(work, 'boot-one.mjs');
    await writeFile(
      script,
      `import { bootMachine } from ${JSON.stringify(controllerDist)};\nimport { createLogger } from ${JSON.stringify(sharedDist)};\n` +
        `const m = await bootMachine({ image: ${JSON.stringify(image)}, upperDir: ${JSON.stringify(upperDir)}, name: 'kiln-orphan', log: createLogger({ level: 'silent' }), bootTimeoutMs: 15000 });\n` +
        `console.log(m.pid1);\nsetInterval(() => {}, 1000);\n`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid1 = await new Promise<number>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      child.on('exit', (code) => reject(new Error(`booting child exited ${code}`)));
    });
    expect(isAlive(pid1)).toBe(true);
    child.kill('SIGKILL');
    await waitFor('the orphaned machine to die', () => !isAlive(pid1) && processesOf('kiln-orphan').length === 0, 5_000);
    expect(mountedAnywhere(upperDir)).toEqual([]);
    // What the dead owner could not clean up (its layer lock, the cgroups) does not block a new boot.
    const again = await boot('kiln-orphan', { upperDir });
    expect((await again.systemctl('is-system-running')).stdout.trim()).toMatch(/^(running|degraded)$/);
    await again.poweroff();
  });
});
