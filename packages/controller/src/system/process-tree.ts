import { readdirSync, readFileSync } from 'node:fs';
import { hasErrno } from '@kiln/shared';

// A process or thread that ends while /proc is read: its files are gone (ENOENT) or refuse reads (ESRCH).
const GONE = ['ENOENT', 'ESRCH'];

/** Direct children of a process (Linux, from /proc/PID/task/TID/children); [] when it is gone. */
export function childPids(pid: number): number[] {
  const found: number[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch (err) {
    if (hasErrno(err, ...GONE)) return found;
    throw err;
  }
  for (const tid of tasks) {
    try {
      for (const p of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (p) found.push(Number(p));
    } catch (err) {
      if (!hasErrno(err, ...GONE)) throw err; // else the thread ended
    }
  }
  return found;
}

/** Every process below `pid`, parents before their children. */
export function descendantPids(pid: number): number[] {
  const all: number[] = [];
  const queue = childPids(pid);
  while (queue.length) {
    const next = queue.shift()!;
    all.push(next);
    queue.push(...childPids(next));
  }
  return all;
}

/** The command name of a process (`comm`), or null when it is gone. */
export function processName(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch (err) {
    if (hasErrno(err, ...GONE)) return null;
    throw err;
  }
}
