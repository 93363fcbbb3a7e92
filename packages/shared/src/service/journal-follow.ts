import { spawn } from 'node:child_process';
import { KilnError } from '../errors/kiln-error.js';
import { createLineSplitter } from './line-splitter.js';

export interface FollowJournalOptions {
  unit: string;
  lines: number;
  follow: boolean;
  onLines: (lines: string[]) => void;
  signal?: AbortSignal | undefined;
  /** the journalctl to run (default: the host's) */
  journalctl?: string | undefined;
}

/**
 * A unit's last lines from the journal (`journalctl -u UNIT -n N -o cat`), then with `follow` its new
 * ones until the signal aborts, which ends journalctl. Throws KILN_LOGS_FAILED when journalctl cannot
 * run or fails.
 */
export function followJournal(o: FollowJournalOptions): Promise<void> {
  const cmd = o.journalctl ?? 'journalctl';
  const args = ['-u', o.unit, '-n', String(o.lines), '-o', 'cat', '--no-pager', ...(o.follow ? ['--follow'] : [])];
  return new Promise<void>((resolve, reject) => {
    if (o.signal?.aborted) return resolve();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const splitter = createLineSplitter();
    let stderr = '';
    const stop = () => child.kill('SIGTERM');
    o.signal?.addEventListener('abort', stop, { once: true });
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = splitter.push(chunk);
      if (lines.length) o.onLines(lines);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (stderr.length < 2048) stderr += chunk.toString('utf8');
    });
    child.on('error', (err) => {
      o.signal?.removeEventListener('abort', stop);
      reject(new KilnError('KILN_LOGS_FAILED', `cannot run ${cmd} to read ${o.unit}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      o.signal?.removeEventListener('abort', stop);
      const rest = splitter.flush();
      if (rest.length) o.onLines(rest);
      if (o.signal?.aborted || code === 0) return resolve();
      reject(new KilnError('KILN_LOGS_FAILED', `${cmd} ${args.join(' ')} failed (${code === null ? signal : `exit ${code}`}): ${stderr.trim().slice(0, 500) || 'no message'}`));
    });
  });
}
