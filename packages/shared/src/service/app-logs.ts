import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { KilnError } from '../errors/kiln-error.js';
import { appLayout } from '../release/install-layout.js';
import { hasErrno, ifMissing } from '../system/fs-errors.js';
import { followJournal } from './journal-follow.js';
import { createLineRate } from './line-rate.js';
import { followLogFile } from './log-file-follow.js';
import { supervisorPaths } from './supervisor-files.js';
import { appUnitName } from './systemd-unit.js';

/** At most this many last lines are read at once. */
export const MAX_LOG_LINES = 10_000;

/**
 * Where an app's output is: the process supervisor's files in its app directory, or the journal of
 * its systemd units (on the host the caller runs on; optional commands for a host without them).
 */
export type LogSource = { kind: 'process'; app: string; appDir: string } | { kind: 'systemd'; app: string; journalctl?: string | undefined; systemctl?: string | undefined };

/** The source for an app on `root` under the given service manager. */
export function logSource(kind: 'process' | 'systemd', root: string, app: string): LogSource {
  return kind === 'systemd' ? { kind, app } : { kind, app, appDir: appLayout(root, app).appDir };
}

/**
 * The processes of the app whose output can be read, `web` first: those the process supervisor has a
 * service file for, or those systemd has a unit of.
 */
export async function appProcesses(source: LogSource): Promise<string[]> {
  let names: string[];
  if (source.kind === 'process') {
    names = (await ifMissing(readdir(source.appDir), [])).map((f) => /^service(?:-([a-z][a-z0-9-]*))?\.json$/.exec(f)).flatMap((m) => (m ? [m[1] ?? 'web'] : []));
  } else {
    const web = appUnitName(source.app);
    const out = await runText(source.systemctl ?? 'systemctl', ['list-units', '--all', '--plain', '--no-legend', '--type=service', web, `kiln-app-${source.app}.*.service`]);
    const units = out.split('\n').map((l) => l.replace(/^\W+/, '').split(/\s+/)[0] ?? '');
    const prefix = `kiln-app-${source.app}.`;
    names = units.flatMap((u) => (u === web ? ['web'] : u.startsWith(prefix) && u.endsWith('.service') ? [u.slice(prefix.length, -'.service'.length)] : []));
  }
  const unique = [...new Set(names)].sort();
  return unique.includes('web') ? ['web', ...unique.filter((n) => n !== 'web')] : unique;
}

/** The processes to read: the one asked for (it must exist), or every one (there must be one). */
export async function logProcesses(source: LogSource, wanted?: string): Promise<string[]> {
  const all = await appProcesses(source);
  if (wanted && all.includes(wanted)) return [wanted];
  const has = all.length ? `it has ${all.join(', ')}` : 'it has none yet (no release started)';
  if (wanted) throw new KilnError('KILN_PROCESS_NOT_FOUND', `app ${source.app} has no process ${wanted} here: ${has}`);
  if (!all.length) throw new KilnError('KILN_PROCESS_NOT_FOUND', `app ${source.app} has no process here whose output could be read: ${has}`);
  return all;
}

export interface AppLogOptions {
  source: LogSource;
  process: string;
  /** the last lines to send first, 0 to MAX_LOG_LINES */
  lines: number;
  /** go on with new lines until the signal aborts */
  follow: boolean;
  /** each batch of lines, every one cut at 8 KiB; a follow past the rate gets one `[kiln] N lines skipped` line a second instead */
  onLines: (lines: string[]) => void;
  signal?: AbortSignal | undefined;
  linesPerSecond?: number;
  bytesPerSecond?: number;
  /** how often a log file is looked at for new lines (default 100 ms) */
  pollMs?: number;
}

/**
 * The last lines of one process's output and, with `follow`, its new lines until the signal aborts:
 * the supervisor's log file (rotation and truncation followed) or the unit's journal (journalctl,
 * ended with the follow). Resolves once done; throws KILN_LOGS_FAILED when the output cannot be read.
 */
export async function readAppLogs(o: AppLogOptions): Promise<void> {
  if (!Number.isInteger(o.lines) || o.lines < 0 || o.lines > MAX_LOG_LINES) throw new Error(`lines must be a whole number from 0 to ${MAX_LOG_LINES}, not ${o.lines}`);
  const rate = createLineRate({ onLines: o.onLines, allowance: o.lines, ...(o.linesPerSecond ? { linesPerSecond: o.linesPerSecond } : {}), ...(o.bytesPerSecond ? { bytesPerSecond: o.bytesPerSecond } : {}) });
  const common = { lines: o.lines, follow: o.follow, signal: o.signal, onLines: rate.push };
  try {
    if (o.source.kind === 'process') await followLogFile({ ...common, file: supervisorPaths(o.source.appDir, o.process).log, pollMs: o.pollMs });
    else await followJournal({ ...common, unit: appUnitName(o.source.app, o.process), journalctl: o.source.journalctl });
  } catch (err) {
    // The file is there but cannot be read: the host's failure, with its reason.
    if (!hasErrno(err, 'EACCES', 'EPERM', 'EIO', 'EISDIR', 'ENOTDIR', 'EMFILE', 'ENFILE')) throw err;
    throw new KilnError('KILN_LOGS_FAILED', `cannot read the output of ${o.source.app}'s ${o.process}: ${(err as Error).message}`, { cause: err });
  } finally {
    rate.close();
  }
}

/** The last `lines` lines a process wrote, from the same source `kiln logs` reads (for an error a person acts on). */
export async function recentLines(source: LogSource, proc: string, lines: number): Promise<string[]> {
  const got: string[] = [];
  await readAppLogs({ source, process: proc, lines, follow: false, onLines: (l) => got.push(...l) });
  return got;
}

function runText(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 10_000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new KilnError('KILN_LOGS_FAILED', `${cmd} ${args.join(' ')} failed: ${(stderr || err.message).trim().slice(0, 500)}`, { cause: err }));
      else resolve(stdout);
    });
  });
}
