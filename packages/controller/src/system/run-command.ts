import { spawn } from 'node:child_process';
import { hasErrno } from '@kiln/shared';
import { descendantPids } from './process-tree.js';

export interface CommandResult {
  /** exit code, or null when a signal ended it */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** the deadline passed and the command was killed */
  timedOut: boolean;
}

export interface RunCommandOptions {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** each complete line of stdout and stderr as it comes (progress) */
  onLine?: (line: string) => void;
  /** keep at most this many bytes of each stream (the tail) */
  maxOutput?: number;
}

function killTree(pid: number | undefined): void {
  if (pid === undefined) return;
  // A forking wrapper (nsenter) must not leave its child running: the tree is collected before any of it dies.
  for (const p of [pid, ...descendantPids(pid)]) {
    try {
      process.kill(p, 'SIGKILL');
    } catch (err) {
      if (!hasErrno(err, 'ESRCH')) throw err; // else it is gone already
    }
  }
}

/** Runs a program (no shell), collecting its output; never rejects for a non-zero exit. Past the deadline the program and everything it started are killed. */
export function runCommand(file: string, args: readonly string[], opts: RunCommandOptions = {}): Promise<CommandResult> {
  const max = opts.maxOutput ?? 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], ...(opts.env ? { env: opts.env } : {}) });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const partial = { out: '', err: '' };
    const take = (which: 'out' | 'err') => (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      if (which === 'out') stdout = (stdout + text).slice(-max);
      else stderr = (stderr + text).slice(-max);
      if (!opts.onLine) return;
      const lines = (partial[which] + text).split('\n');
      partial[which] = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) opts.onLine(line);
    };
    child.stdout.on('data', take('out'));
    child.stderr.on('data', take('err'));
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      killTree(child.pid);
    }, opts.timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    // A child that exits without reading its input must not crash us with EPIPE: its exit says what happened.
    child.stdin.on('error', (err) => {
      if (!hasErrno(err, 'EPIPE', 'ECONNRESET')) reject(err);
    });
    child.stdin.end(opts.input ?? '');
  });
}
