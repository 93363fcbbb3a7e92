import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { hasErrno, ifMissing } from '@kiln/shared';

const PARENT = 'kiln-machines';

/**
 * One cgroup per machine in each hierarchy systemd uses (cgroup2, and the v1 `name=systemd` one
 * on hybrid hosts). Without it every `systemd-nspawn --keep-unit` started from the same cgroup puts
 * its container in the same `payload` cgroup, and the containers' systemds then share and kill
 * each other's unit cgroups.
 */
export async function machineCgroupDirs(name: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const dirs: string[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const mountPoint = left.split(' ')[4];
    const [fstype, , superOpts = ''] = right.split(' ');
    if (!mountPoint) continue;
    if (fstype === 'cgroup2' || (fstype === 'cgroup' && superOpts.split(',').includes('name=systemd'))) {
      dirs.push(path.join(mountPoint, PARENT, name));
    }
  }
  return [...new Set(dirs)];
}

/** Every cgroup directory at or below `dir`, deepest first (one removed meanwhile has none below it). */
async function cgroupTree(dir: string): Promise<string[]> {
  const below: string[] = [];
  for (const e of await ifMissing(readdir(dir, { withFileTypes: true }), [])) {
    if (e.isDirectory()) below.push(...(await cgroupTree(path.join(dir, e.name))));
  }
  return [...below, dir];
}

/** Whether any process is left in the machine's cgroups. */
export async function cgroupsPopulated(dirs: readonly string[]): Promise<boolean> {
  for (const dir of dirs) {
    for (const d of await cgroupTree(dir)) {
      const procs = await ifMissing(readFile(path.join(d, 'cgroup.procs'), 'utf8'), '');
      if (procs.trim()) return true;
    }
  }
  return false;
}

/** Creates the machine's cgroups (empty); the start script moves itself in. */
export async function createMachineCgroups(dirs: readonly string[]): Promise<void> {
  for (const dir of dirs) await mkdir(dir, { recursive: true });
}

/** Removes the machine's cgroups, children first; returns false when one still holds a process. */
export async function removeMachineCgroups(dirs: readonly string[]): Promise<boolean> {
  let clean = true;
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    for (const d of await cgroupTree(dir)) {
      try {
        await rmdir(d);
      } catch (err) {
        // EBUSY: a process is still in it (ENOTEMPTY: a cgroup below it is); ENOENT: it went already.
        if (hasErrno(err, 'EBUSY', 'ENOTEMPTY')) clean = false;
        else if (!hasErrno(err, 'ENOENT')) throw err;
      }
    }
  }
  return clean;
}
