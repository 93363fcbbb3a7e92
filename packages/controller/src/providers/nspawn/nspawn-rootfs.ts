import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { acquireLock, ifMissing, isKilnError, KilnError, pollUntil, type Lock, type Logger } from '@kiln/shared';
import { hostDebianMirror } from './debian-mirror.js';
import { mountsUnder } from './mount-table.js';
import { checkNspawnHost } from './nspawn-host.js';
import { runCommand } from '../../system/run-command.js';

/** Names the cached tree; bump it whenever the preparation below changes, so caches rebuild. */
export const BASE_ROOTFS_RECIPE = 'debian-bookworm-systemd-r2';

const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

// Units a container never needs and that slow its boot or wake it later: login prompts, the
// console, apt's and the filesystems' periodic jobs.
const MASKED_UNITS = [
  'console-getty.service',
  'container-getty@.service',
  'getty@.service',
  'serial-getty@.service',
  'getty.target',
  'apt-daily.service',
  'apt-daily.timer',
  'apt-daily-upgrade.service',
  'apt-daily-upgrade.timer',
  'dpkg-db-backup.service',
  'dpkg-db-backup.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'fstrim.timer',
  'systemd-pstore.service',
];

/** The cache directory: the given one (KILN_CACHE_DIR, read by the caller), else ~/.cache/kiln. */
export function kilnCacheDir(fromEnv?: string): string {
  return fromEnv ? path.resolve(fromEnv) : path.join(homedir(), '.cache', 'kiln');
}

export interface EnsureBaseRootfsOptions {
  cacheDir: string;
  /** Debian mirror; default: the one this host's apt uses */
  mirror?: string;
  log: Logger;
  /** debootstrap's progress lines ("Retrieving …", "Unpacking …") while it builds */
  onProgress?: (message: string) => void;
  /** how long to wait for another process that builds the same tree (default 15 min) */
  lockWaitMs?: number;
  /** how long debootstrap may take (default 20 min) */
  buildTimeoutMs?: number;
  /** the debootstrap program (default: the host's); tests pass a stand-in */
  debootstrap?: string;
}

/** Whether `dir` is a complete tree: only a finished build is renamed to its final name. */
function isBuilt(dir: string): boolean {
  return existsSync(path.join(dir, 'usr/lib/systemd/systemd')) && existsSync(path.join(dir, 'etc/os-release'));
}

/** Takes the build lock, waiting while another live process holds it. */
async function waitForLock(file: string, waitMs: number): Promise<Lock> {
  let busy: KilnError | undefined;
  return pollUntil({
    check: () =>
      acquireLock(file, 'building the base root filesystem').catch((err) => {
        if (!isKilnError(err, 'KILN_BUSY')) throw err;
        busy = err;
        return undefined;
      }),
    timeoutMs: waitMs,
    intervalMs: 500,
    // past the wait, the holder's KILN_BUSY (it names the pid) is the answer
    timeoutError: () => busy!,
  });
}

/**
 * Removes a tree left by an interrupted build. debootstrap mounts /proc and /sys inside the tree
 * it builds: those are unmounted first and the removal never crosses into another filesystem.
 */
async function removeTree(dir: string): Promise<void> {
  for (const point of await mountsUnder(dir)) await runCommand('umount', ['-l', point]);
  const r = await runCommand('rm', ['-rf', '--one-file-system', '--', dir]);
  if (r.code !== 0) throw new KilnError('KILN_BASE_IMAGE_FAILED', `could not remove the unfinished tree ${dir}: ${r.stderr.trim()}`);
}

/** Makes the tree boot fast and behave as a fresh machine each time an instance first boots it. */
async function prepare(root: string): Promise<void> {
  const units = path.join(root, 'etc/systemd/system');
  for (const unit of MASKED_UNITS) {
    await rm(path.join(units, unit), { force: true, recursive: true });
    await symlink('/dev/null', path.join(units, unit));
  }
  // Drop the enablement links of what is masked, so systemd does not warn about them at boot.
  for (const wants of await ifMissing(readdir(units), [])) {
    if (!wants.endsWith('.wants')) continue;
    for (const link of await readdir(path.join(units, wants))) {
      if (MASKED_UNITS.includes(link) || /^getty@/.test(link)) await rm(path.join(units, wants, link), { force: true });
    }
  }
  await rm(path.join(units, 'default.target'), { force: true });
  await symlink('/lib/systemd/system/multi-user.target', path.join(units, 'default.target'));
  // Empty: systemd gives each instance its own id at first boot and writes it into that
  // instance's layer (debootstrap left the build's id here, which all instances would share).
  await writeFile(path.join(root, 'etc/machine-id'), '');
  await chmod(path.join(root, 'etc/machine-id'), 0o444);
  // An empty /etc/machine-id is seeded from D-Bus's copy when there is one: it must be a link.
  await rm(path.join(root, 'var/lib/dbus/machine-id'), { force: true });
  await mkdir(path.join(root, 'var/lib/dbus'), { recursive: true });
  await symlink('/etc/machine-id', path.join(root, 'var/lib/dbus/machine-id'));
  // No /etc/hostname: the name the machine is booted with (systemd-nspawn --hostname) stays.
  await rm(path.join(root, 'etc/hostname'), { force: true });
  // The host's node is bind-mounted here read-only; an existing target keeps the mount point out
  // of every instance's layer.
  await writeFile(path.join(root, 'usr/bin/node'), '');
  await chmod(path.join(root, 'usr/bin/node'), 0o755);
  await rm(path.join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
  await mkdir(path.join(root, 'var/cache/apt/archives/partial'), { recursive: true });
}

async function build(dir: string, mirror: string, opts: EnsureBaseRootfsOptions & { debootstrap: string }, log: Logger): Promise<void> {
  const args = ['--variant=minbase', '--include=systemd,dbus,systemd-sysv', 'bookworm', dir, mirror];
  log.info({ dir, mirror }, 'building the base root filesystem (debootstrap, about a minute)');
  const r = await runCommand(opts.debootstrap, args, {
    env: { ...process.env, PATH: SYSTEM_PATH, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' } as Record<string, string>,
    timeoutMs: opts.buildTimeoutMs ?? 20 * 60_000,
    maxOutput: 64 * 1024,
    onLine: (line) => {
      const m = /^I: (.*)/.exec(line);
      if (m) opts.onProgress?.(m[1]!);
    },
  });
  if (r.code !== 0) {
    const tail = `${r.stdout}\n${r.stderr}`.trim().split('\n').slice(-8).join('\n');
    throw new KilnError('KILN_BASE_IMAGE_FAILED', `debootstrap ${r.timedOut ? 'timed out' : `failed (exit ${r.code ?? r.signal})`} with mirror ${mirror}:\n${tail}`, {
      details: { mirror, code: r.code },
    });
  }
  await prepare(dir);
}

/**
 * The path of a cached minimal Debian bookworm tree with systemd, built once with debootstrap.
 * It is built under a temporary name and renamed when complete, so an interrupted build never
 * leaves a tree that looks finished; a lock makes concurrent callers wait for one build.
 */
export async function ensureBaseRootfs(opts: EnsureBaseRootfsOptions): Promise<string> {
  const log = opts.log.child({ module: 'nspawn-rootfs' });
  const cacheDir = path.resolve(opts.cacheDir);
  const final = path.join(cacheDir, BASE_ROOTFS_RECIPE);
  if (isBuilt(final)) return final;

  const debootstrap = opts.debootstrap ?? checkNspawnHost({ debootstrap: true }).debootstrap!;
  await mkdir(cacheDir, { recursive: true });
  const lock = await waitForLock(path.join(cacheDir, `${BASE_ROOTFS_RECIPE}.lock`), opts.lockWaitMs ?? 15 * 60_000);
  let tmp: string | undefined;
  try {
    if (isBuilt(final)) return final; // another process built it while we waited
    // Under the lock, any temporary tree is an interrupted build's leftover.
    for (const name of await readdir(cacheDir)) {
      if (name.startsWith(`${BASE_ROOTFS_RECIPE}.kiln-tmp-`)) {
        log.warn({ dir: name }, 'removing an interrupted base build');
        await removeTree(path.join(cacheDir, name));
      }
    }
    if (existsSync(final)) await removeTree(final); // there but incomplete: not ours to trust
    tmp = `${final}.kiln-tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    await mkdir(tmp);
    const started = Date.now();
    await build(tmp, opts.mirror ?? (await hostDebianMirror('bookworm')), { ...opts, debootstrap }, log);
    await rename(tmp, final);
    tmp = undefined;
    log.info({ dir: final, ms: Date.now() - started }, 'base root filesystem built');
    return final;
  } finally {
    if (tmp) await removeTree(tmp).catch((err: unknown) => log.error({ err, dir: tmp }, 'could not remove the failed build'));
    await lock.release();
  }
}
