import { createConnection } from 'node:net';
import { KilnError } from '@kiln/shared';

/**
 * HAProxy's runtime API (the `stats socket` in haproxy.cfg): one command per connection, the answer
 * is everything until HAProxy closes it. HAProxy answers an error in plain words with no status
 * ("No such server.", "Unknown command, …"), so every caller says which answer means success.
 */

export interface RuntimeOptions {
  /** give up on an answer after this long (HAProxy answers in milliseconds; a hung one must not hang a rollout) */
  timeoutMs?: number;
}

/** Sends one command line and resolves with HAProxy's whole answer; a socket failure is KILN_BALANCER_FAILED. */
export function runtimeCommand(socketPath: string, line: string, opts: RuntimeOptions = {}): Promise<string> {
  // A newline inside would smuggle a second command past the caller's check of the answer.
  if (/[\r\n]/.test(line)) throw new Error(`a runtime command is one line: ${JSON.stringify(line)}`);
  const timeoutMs = opts.timeoutMs ?? 5_000;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = createConnection(socketPath);
    const fail = (why: string, cause?: unknown) => {
      sock.destroy();
      reject(
        new KilnError('KILN_BALANCER_FAILED', `HAProxy's runtime API at ${socketPath} ${why} (command "${line}"); check that HAProxy runs (a running controller starts it again within seconds, a stopped one on its next start)`, {
          cause,
        }),
      );
    };
    sock.setTimeout(timeoutMs, () => fail(`did not answer within ${timeoutMs} ms`));
    // No half-close after the line: HAProxy may take an early end of input for an aborted session.
    sock.on('connect', () => sock.write(`${line}\n`));
    sock.on('data', (chunk: Buffer) => chunks.push(chunk));
    sock.on('error', (err: NodeJS.ErrnoException) => fail(`cannot be reached: ${err.code ?? err.message}`, err));
    sock.on('close', (hadError) => {
      if (!hadError) resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
}

/**
 * Sends a command whose success answer HAProxy 2.6 spells `expected` ('' for the commands that
 * answer nothing, e.g. `set server`, `enable health`); any other answer is KILN_BALANCER_FAILED quoting it.
 */
export async function runtimeExpect(socketPath: string, line: string, expected: string, opts: RuntimeOptions = {}): Promise<void> {
  const answer = (await runtimeCommand(socketPath, line, opts)).trim();
  if (answer !== expected) throw runtimeRefused(line, answer);
}

export function runtimeRefused(line: string, answer: string): KilnError {
  const said = answer.split('\n')[0]?.trim() || '(nothing)';
  return new KilnError('KILN_BALANCER_FAILED', `HAProxy refused "${line}": ${said}`, { details: { command: line, answer } });
}

/** One row of `show stat`, the fields kiln reads. */
export interface StatRow {
  /** proxy (frontend or backend) name */
  pxname: string;
  /** server name, or FRONTEND / BACKEND for the proxy's own row */
  svname: string;
  /** sessions in flight now */
  scur: number;
  /** UP, DOWN, MAINT, DRAIN, NOLB, "no check", "UP 1/2" (a transition), "MAINT (via b/s)", OPEN (frontend) … */
  status: string;
  /** the last check's result: INI (none yet), L4OK, L4CON, L4TOUT, … ('' without checks) */
  checkStatus: string;
  /** the last check's words ("Connection refused"), '' when none */
  lastCheck: string;
  /** the server's address, HOST:PORT */
  addr: string;
  hrsp1xx: number;
  hrsp2xx: number;
  hrsp3xx: number;
  hrsp4xx: number;
  hrsp5xx: number;
  hrspOther: number;
}

/**
 * Parses `show stat`'s CSV (header "# pxname,svname,…"). The columns are found by name, not place:
 * HAProxy appends columns between versions. Anything else (an error answer) is KILN_BALANCER_FAILED.
 */
export function parseShowStat(text: string, line = 'show stat'): StatRow[] {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const header = lines[0];
  if (!header?.startsWith('# ')) throw runtimeRefused(line, text.trim());
  const cols = header.slice(2).split(',');
  const at = (name: string) => {
    const i = cols.indexOf(name);
    if (i < 0) throw new KilnError('KILN_BALANCER_FAILED', `HAProxy's "show stat" has no column ${name}: this HAProxy is not one kiln knows (2.6 works)`);
    return i;
  };
  const idx = {
    pxname: at('pxname'),
    svname: at('svname'),
    scur: at('scur'),
    status: at('status'),
    checkStatus: at('check_status'),
    lastCheck: at('last_chk'),
    addr: at('addr'),
    h1: at('hrsp_1xx'),
    h2: at('hrsp_2xx'),
    h3: at('hrsp_3xx'),
    h4: at('hrsp_4xx'),
    h5: at('hrsp_5xx'),
    ho: at('hrsp_other'),
  };
  return lines.slice(1).map((row) => {
    const v = splitCsv(row);
    const num = (i: number) => Number(v[i] || 0);
    return {
      pxname: v[idx.pxname] ?? '',
      svname: v[idx.svname] ?? '',
      scur: num(idx.scur),
      status: v[idx.status] ?? '',
      checkStatus: v[idx.checkStatus] ?? '',
      lastCheck: v[idx.lastCheck] ?? '',
      addr: v[idx.addr] ?? '',
      hrsp1xx: num(idx.h1),
      hrsp2xx: num(idx.h2),
      hrsp3xx: num(idx.h3),
      hrsp4xx: num(idx.h4),
      hrsp5xx: num(idx.h5),
      hrspOther: num(idx.ho),
    };
  });
}

/** One CSV line: HAProxy quotes a field that holds a comma or a quote (a check's description may). */
function splitCsv(row: string): string[] {
  const fields: string[] = [];
  const re = /("(?:[^"]|"")*"|[^,]*)(,|$)/g;
  for (let m = re.exec(row); m; m = re.exec(row)) {
    const f = m[1] ?? '';
    fields.push(f.startsWith('"') ? f.slice(1, -1).replace(/""/g, '"') : f);
    if (m[2] === '') break;
  }
  return fields;
}

/** The server rows of one backend (`show stat BE 4 -1`: type 4 = servers); a backend HAProxy lacks is KILN_BALANCER_FAILED. */
export async function backendStats(socketPath: string, backend: string, opts: RuntimeOptions = {}): Promise<StatRow[]> {
  const line = `show stat ${backend} 4 -1`;
  return parseShowStat(await runtimeCommand(socketPath, line, opts), line).filter((r) => r.pxname === backend);
}

/** Every server row HAProxy has (all backends). */
export async function allServerStats(socketPath: string, opts: RuntimeOptions = {}): Promise<StatRow[]> {
  const line = 'show stat -1 4 -1';
  return parseShowStat(await runtimeCommand(socketPath, line, opts), line);
}

/** The pid of the process answering on the socket (`show info`), to tell a reloaded HAProxy from the old one. */
export async function runtimePid(socketPath: string, opts: RuntimeOptions = {}): Promise<number> {
  const answer = await runtimeCommand(socketPath, 'show info', opts);
  const m = /^Pid: (\d+)$/m.exec(answer);
  if (!m) throw runtimeRefused('show info', answer);
  return Number(m[1]);
}
