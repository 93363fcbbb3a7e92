import { KilnError, MAX_LOG_LINES, ProcessName } from '@kiln/shared';
import type { OptionDef } from './cli-command.js';
import { intFlag, str, type CliContext, type Flags } from './cli-context.js';

/** What `kiln logs` and `kiln host logs` both take. */
export const APP_LOG_OPTIONS: Record<string, OptionDef> = {
  process: { type: 'string', value: 'P', help: 'only this process of the app (default: every one, web first)' },
  lines: { type: 'string', value: 'N', help: `the last N lines of each process first (default 100, at most ${MAX_LOG_LINES})` },
  follow: { type: 'boolean', short: 'f', help: 'then print new lines as they come, until Ctrl-C' },
};

export const APP_LOG_DETAILS =
  'A follow carries at most 1000 lines (and 1 MiB) a second per process; what an app writes past that is\n' +
  'dropped, and one line a second says how many: "[kiln] N lines skipped". Lines are cut at 8 KiB.';

export interface AppLogRequest {
  process: string | undefined;
  lines: number;
  follow: boolean;
}

export function appLogRequest(flags: Flags): AppLogRequest {
  const process = str(flags, 'process');
  if (process !== undefined && !ProcessName.safeParse(process).success) throw new KilnError('KILN_USAGE', `--process ${process}: a process name (web, worker: lower-case letters, digits and -)`);
  return { process, lines: intFlag(flags, 'lines', 0, MAX_LOG_LINES) ?? 100, follow: !!flags.follow };
}

/** One line of output: `INSTANCE PROCESS | line` (`PROCESS | line` on one host), or the item as a JSON line with --json. */
export function printLogLine(ctx: CliContext, item: { instance?: string; process: string; line: string }): void {
  if (ctx.json) ctx.io.stdout.write(JSON.stringify(item) + '\n');
  else ctx.io.stdout.write(`${item.instance ? `${item.instance} ` : ''}${item.process} | ${item.line}\n`);
}

/** Runs a read (a follow) until it ends or Ctrl-C aborts it, which ends it cleanly. */
export async function readUntilInterrupted(ctx: CliContext, read: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const ac = new AbortController();
  const release = ctx.io.onInterrupt?.(() => ac.abort()) ?? (() => undefined);
  try {
    await read(ac.signal);
  } finally {
    release();
  }
}
