import { spawn } from 'node:child_process';
import { hasErrno } from '../system/fs-errors.js';
import type { HookOutcome } from './service-manager.js';

export const HOOK_TAIL_LINES = 20;
const MAX_LINE = 2048;

export interface SpawnHookOptions {
  command: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  timeoutMs: number;
  uid?: number;
  gid?: number;
  onSpawn?: ((pid: number) => void | Promise<void>) | undefined;
  /** called once the timeout killed the process group (e.g. to stop a transient unit as well) */
  onTimeout?: () => Promise<void>;
}

/**
 * Runs a hook in a process group of its own and keeps the last lines of its output; past its
 * timeout the whole group is killed (SIGKILL), so a hook's children cannot outlive it.
 */
export function spawnHook(o: SpawnHookOptions): Promise<HookOutcome> {
  const started = Date.now();
  const tail: string[] = [];
  let partial = '';
  const take = (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop()!.slice(0, MAX_LINE);
    for (const l of lines) tail.push(l.slice(0, MAX_LINE));
    tail.splice(0, Math.max(0, tail.length - HOOK_TAIL_LINES));
  };
  return new Promise((resolve) => {
    let timedOut = false;
    const child = spawn(o.command[0]!, o.command.slice(1), {
      cwd: o.cwd,
      env: o.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(o.uid !== undefined ? { uid: o.uid } : {}),
      ...(o.gid !== undefined ? { gid: o.gid } : {}),
    });
    if (child.pid) void o.onSpawn?.(child.pid);
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
      void o.onTimeout?.();
    }, o.timeoutMs);
    const done = (code: number | null) => {
      clearTimeout(timer);
      if (partial) tail.push(partial);
      partial = '';
      resolve({ code: timedOut ? null : code, timedOut, tail: tail.slice(-HOOK_TAIL_LINES), ms: Date.now() - started });
    };
    child.on('error', (err) => {
      tail.push(`cannot start ${o.command[0]}: ${err.message}`);
      done(127);
    });
    // Whatever the hook left running in its group goes with it (it would hold the pipes open).
    child.on('exit', () => killGroup(child.pid));
    // 'close', not 'exit': the output is complete only once the pipes are.
    child.on('close', (code, signal) => done(code ?? (signal ? 128 : null)));
  });
}

/** SIGKILL to a process group; ESRCH: it is gone already. */
export function killGroup(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!pid) return;
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if (!hasErrno(err, 'ESRCH')) throw err;
  }
}
