import type { Writable } from 'node:stream';

const LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };
/** pino's own fields, and what a line shows on its own */
const QUIET = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg', 'err']);

interface LoggedError {
  type?: string;
  code?: string;
  message?: string;
  stack?: string;
}

/**
 * Where the CLI's logger writes: one readable line per record on stderr ("kiln warn: new release
 * failed: swapping back version=2.0.0") instead of pino's JSON. An error shows its code and message;
 * its stack only at --log-level debug or trace, so the line that ends a failed command
 * (`error KILN_…: …`) is not preceded by a stack trace for a failure kiln knows and names.
 */
export function logLines(stream: Writable, level: string): { write(line: string): void } {
  const stacks = level === 'debug' || level === 'trace';
  return {
    write(line) {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch (err) {
        if (!(err instanceof SyntaxError)) throw err;
        stream.write(line.endsWith('\n') ? line : `${line}\n`);
        return;
      }
      const fields = Object.entries(rec)
        .filter(([k, v]) => !QUIET.has(k) && v !== undefined)
        .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
      const e = rec.err as LoggedError | undefined;
      const err = e ? `: ${e.code ?? e.type ?? 'Error'}: ${e.message ?? ''}` : '';
      const stack = e?.stack && stacks ? `\n${e.stack.replace(/^/gm, '    ')}` : '';
      stream.write(`kiln ${LEVELS[rec.level as number] ?? 'log'}: ${String(rec.msg ?? '')}${err}${fields.length ? ` ${fields.join(' ')}` : ''}${stack}\n`);
    },
  };
}
