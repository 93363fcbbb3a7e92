import { readFileSync } from 'node:fs';
import { hasErrno } from './fs-errors.js';

/**
 * Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses), or null
 * when there is no such process (ENOENT; ESRCH: it exited while being read) or no /proc (not Linux).
 */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch (err) {
    if (hasErrno(err, 'ENOENT', 'ESRCH')) return null;
    throw err;
  }
}

/** Whether a process runs. A zombie (exited, not yet reaped by its parent) does not. */
export function isAlive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (hasErrno(err, 'ESRCH')) return false;
    if (!hasErrno(err, 'EPERM')) throw err; // EPERM: it runs, as another user
  }
  return statFields(pid)?.[0] !== 'Z';
}

/** Whether `pid` still is the process that had start time `start` (a pid is reused after a reboot). */
export function isSameProcess(pid: number | null | undefined, start: string | null | undefined): boolean {
  if (!isAlive(pid)) return false;
  return !start || processStart(pid!) === start;
}

/** The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it; null elsewhere. */
export function processStart(pid: number): string | null {
  return statFields(pid)?.[19] ?? null;
}
