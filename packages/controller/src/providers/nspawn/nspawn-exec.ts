import { KilnError } from '@kiln/shared';
import { runCommand } from '../../system/run-command.js';

export interface MachineExecOptions {
  /** written to the command's stdin */
  input?: string;
  /** the command's whole environment besides PATH, LANG and HOME (the caller's is never passed in) */
  env?: Record<string, string>;
  /** kill the command (and what it started) past this; default 60 s */
  timeoutMs?: number;
}

export interface MachineExecResult {
  /** exit code; null when a signal ended the command */
  code: number | null;
  stdout: string;
  stderr: string;
}

const MACHINE_ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  LANG: 'C.UTF-8',
  HOME: '/root',
  SYSTEMD_PAGER: '',
  SYSTEMD_COLORS: '0',
};

/**
 * Runs `argv` inside a machine: in all the namespaces of its PID 1, so as a process of that machine
 * (its root, its systemd, its pid numbers) but outside any of its units.
 */
export async function execInMachine(args: { nsenter: string; pid1: number; machine: string; argv: readonly string[] } & MachineExecOptions): Promise<MachineExecResult> {
  if (args.argv.length === 0) throw new Error('execInMachine: empty argv');
  const timeoutMs = args.timeoutMs ?? 60_000;
  const r = await runCommand(args.nsenter, ['-t', String(args.pid1), '-a', '--', ...args.argv], {
    env: { ...MACHINE_ENV, ...args.env },
    timeoutMs,
    ...(args.input === undefined ? {} : { input: args.input }),
  });
  if (r.timedOut) {
    throw new KilnError('KILN_MACHINE_TIMEOUT', `${args.argv.join(' ')} in machine ${args.machine} ran past ${timeoutMs} ms (killed)`, {
      details: { machine: args.machine, argv: [...args.argv] },
    });
  }
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}
