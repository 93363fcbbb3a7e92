import { readdirSync, readFileSync } from 'node:fs';

/** Direct children of a process (Linux, from /proc/PID/task/TID/children); [] when it is gone. */
export function childPids(pid: number): number[] {
  const found: number[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return found;
  }
  for (const tid of tasks) {
    try {
      for (const p of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (p) found.push(Number(p));
    } catch {
      // the thread ended
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
  } catch {
    return null;
  }
}
