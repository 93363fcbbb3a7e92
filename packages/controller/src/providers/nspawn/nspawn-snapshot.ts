import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, copyFile, lchown, lstat, lutimes, mkdir, readdir, readlink, rm, rmdir, symlink, utimes } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import path from 'node:path';
import { KilnError, ifMissing, type Logger } from '@kiln/shared';
import type { NspawnTools } from './nspawn-host.js';
import { runCommand } from '../../system/run-command.js';

export interface SnapshotLayersOptions {
  /** the image the instance booted from: only read */
  lower: string;
  /** the instance's upper layer (whiteouts and opaque directories as overlayfs left them); only read */
  upper: string;
  /** the new tree; must not exist */
  dest: string;
  tools: Pick<NspawnTools, 'setpriv' | 'unshare'>;
  timeoutMs: number;
  log: Logger;
}

// Mounts the two layers read-only in a private mount namespace (the host never sees the mount) and
// waits there, so the merged tree can be read through /proc/PID/root while it lives.
const HOLD_SCRIPT = 'mount -t overlay overlay -o "ro,lowerdir=$1" "$2" || exit 97; echo ready; exec sleep 86400';

/**
 * Makes `dest` the merged tree of an overlay (lower + upper) without writing either: first hard
 * links to every file of the lower tree (images are never written, so sharing their inodes is safe,
 * and an image costs only what its instance changed), then each entry the upper layer names is made
 * as the overlay shows it: gone (whiteout), a directory listing the same names (opaque directories),
 * or a fresh copy (never a write through a shared link).
 */
export async function snapshotLayers(o: SnapshotLayersOptions): Promise<void> {
  const deadline = Date.now() + o.timeoutMs;
  await linkTree(o.lower, o.dest, o.timeoutMs);
  const mnt = `${o.dest}.mnt`;
  await mkdir(mnt, { recursive: true });
  const holder = spawn(o.tools.setpriv, ['--pdeathsig', 'KILL', '--', o.tools.unshare, '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', HOLD_SCRIPT, 'kiln-snapshot', `${o.upper}:${o.lower}`, mnt], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' },
  });
  let errText = '';
  holder.stderr.on('data', (c: Buffer) => (errText += c.toString('utf8')));
  // An 'error' (the holder could not start) ends it as an exit does; it is kept for the failure below.
  let startError: Error | undefined;
  const exited = once(holder, 'exit').then(
    () => undefined,
    (err: Error) => void (startError = err),
  );
  try {
    const ready = await new Promise<boolean>((resolve) => {
      holder.stdout.once('data', () => resolve(true));
      void exited.then(() => resolve(false));
    });
    if (!ready) throw new KilnError('KILN_PROVIDER_FAILED', `cannot mount the layers of ${o.upper} to snapshot them: ${startError?.message ?? errText.trim()}`, { cause: startError });
    const merged = `/proc/${holder.pid}/root${path.resolve(mnt)}`;
    await applyUpper({ upper: o.upper, merged, dest: o.dest, deadline }, '');
  } finally {
    holder.kill('SIGKILL');
    await exited;
    // An empty directory left behind harms nothing, and must not hide how the snapshot went.
    await ifMissing(rmdir(mnt), undefined).catch((err: unknown) => o.log.warn({ err, mnt }, 'cannot remove the mount point of a snapshot'));
  }
}

/**
 * `dest` (which must not exist) as a tree of hard links to the files of `from`, a read-only tree;
 * a copy when they are on different filesystems. Whoever adds to `dest` must replace files, never write into them.
 */
export async function linkTree(from: string, dest: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const linked = await runCommand('cp', ['-a', '-l', '--', from, dest], { timeoutMs });
  if (linked.code === 0) return;
  // Another filesystem than the source tree's: hard links cannot cross it, copies can.
  await rm(dest, { recursive: true, force: true });
  const copied = await runCommand('cp', ['-a', '--', from, dest], { timeoutMs: Math.max(1_000, deadline - Date.now()) });
  if (copied.code !== 0) throw new KilnError('KILN_PROVIDER_FAILED', `cannot copy ${from} to ${dest}: ${copied.stderr.trim() || linked.stderr.trim()}`);
}

interface Walk {
  upper: string;
  merged: string;
  dest: string;
  deadline: number;
}

async function applyUpper(w: Walk, rel: string): Promise<void> {
  if (Date.now() > w.deadline) throw new KilnError('KILN_PROVIDER_TIMEOUT', `snapshot of ${w.upper} ran past its deadline`);
  for (const name of await readdir(path.join(w.upper, rel))) {
    const p = path.join(rel, name);
    const src = path.join(w.merged, p);
    const dst = path.join(w.dest, p);
    const m = await ifMissing(lstat(src), null);
    if (!m) {
      await rm(dst, { recursive: true, force: true }); // a whiteout
      continue;
    }
    if (!m.isDirectory()) {
      await rm(dst, { recursive: true, force: true });
      await copyEntry(src, dst, m);
      continue;
    }
    const have = await ifMissing(lstat(dst), null);
    if (have && !have.isDirectory()) await rm(dst, { force: true });
    if (!have?.isDirectory()) await mkdir(dst);
    // An opaque directory hides the lower one's entries; whiteouts inside hide single ones.
    const keep = new Set(await readdir(src));
    for (const n of await readdir(dst)) if (!keep.has(n)) await rm(path.join(dst, n), { recursive: true, force: true });
    await applyUpper(w, p);
    await setMeta(dst, m);
  }
}

async function setMeta(dst: string, m: Stats): Promise<void> {
  await chown(dst, m.uid, m.gid);
  await chmod(dst, m.mode & 0o7777); // after chown, which clears setuid bits
  await utimes(dst, m.atime, m.mtime);
}

async function copyEntry(src: string, dst: string, m: Stats): Promise<void> {
  if (m.isFile()) {
    await copyFile(src, dst);
    await setMeta(dst, m);
  } else if (m.isSymbolicLink()) {
    await symlink(await readlink(src), dst);
    await lchown(dst, m.uid, m.gid);
    await lutimes(dst, m.atime, m.mtime);
  } else if (!m.isSocket()) {
    // FIFOs and devices: Node cannot make them; a socket means nothing once its machine is off.
    const r = await runCommand('cp', ['-a', '--', src, dst]);
    if (r.code !== 0) throw new KilnError('KILN_PROVIDER_FAILED', `cannot copy ${src}: ${r.stderr.trim()}`);
  }
}
