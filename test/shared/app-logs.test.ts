// Reading an app's output (app-logs.ts): the supervisor's log files (tail, follow, rotation,
// truncation, long lines, the rate bound) and the journal through journalctl (a stand-in script with
// the real one's arguments), and the agent's side of a log stream (frames, its limit, follows ended).
import { appendFile, chmod, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { createAgentLogs, frameBatches } from '@kiln/agent';
import { MAX_LINE_BYTES, MAX_LOG_FRAME_CHARS, MAX_LOG_FRAME_LINES, PROTOCOL_VERSION, appProcesses, isAlive, logProcesses, parseFrame, readAppLogs, type LogSource, type Outgoing } from '@kiln/shared';
import { quietLog, tempDir } from '../helpers/release.js';

const aborts: AbortController[] = [];
afterEach(() => {
  for (const ac of aborts.splice(0)) ac.abort();
});

/** Reads a process's output into `got`; resolves the read's promise as `done`. */
function reader(source: LogSource, opts: { process?: string; lines: number; follow: boolean; linesPerSecond?: number }) {
  const ac = new AbortController();
  aborts.push(ac);
  const got: string[] = [];
  const done = readAppLogs({ source, process: opts.process ?? 'web', lines: opts.lines, follow: opts.follow, signal: ac.signal, pollMs: 20, onLines: (l) => got.push(...l), ...(opts.linesPerSecond ? { linesPerSecond: opts.linesPerSecond } : {}) });
  return { got, done, stop: () => ac.abort() };
}

async function appDirWith(files: Record<string, string>): Promise<{ source: LogSource; dir: string }> {
  const dir = await tempDir('kiln-logs-');
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return { dir, source: { kind: 'process', app: 'shop', appDir: dir } };
}

const numbered = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => `line ${from + i}`);

describe('the process supervisor\'s log files', () => {
  it('gives the last N whole lines; a line still being written comes whole with the follow', async () => {
    const { source, dir } = await appDirWith({ 'service.log': numbered(1, 50).join('\n') + '\nhalf a li' });
    const r = reader(source, { lines: 5, follow: true });
    await expect.poll(() => r.got.length).toBe(5);
    expect(r.got).toEqual(numbered(46, 50));
    await appendFile(path.join(dir, 'service.log'), 'ne\nline 52\n');
    await expect.poll(() => r.got.slice(5)).toEqual(['half a line', 'line 52']);
    r.stop();
    await r.done;
  });

  it('without follow: resolves after the tail, whose last line may lack its newline; a file not there yet is no lines; 0 lines is none', async () => {
    const { source } = await appDirWith({ 'service-worker.log': numbered(1, 3).join('\n') + '\n', 'service-cron.log': 'a\nb\nhalf' });
    const cron = reader(source, { process: 'cron', lines: 2, follow: false });
    await cron.done;
    expect(cron.got).toEqual(['b', 'half']);
    const worker = reader(source, { process: 'worker', lines: 10, follow: false });
    await worker.done;
    expect(worker.got).toEqual(numbered(1, 3));
    const web = reader(source, { lines: 10, follow: false });
    await web.done;
    expect(web.got).toEqual([]);
    const none = reader(source, { process: 'worker', lines: 0, follow: false });
    await none.done;
    expect(none.got).toEqual([]);
  });

  it('follows a file that appears later, is rotated away (renamed, a new one made) and truncated in place', async () => {
    const { source, dir } = await appDirWith({});
    const log = path.join(dir, 'service.log');
    const r = reader(source, { lines: 100, follow: true });
    await sleep(60);
    await writeFile(log, 'first\n');
    await expect.poll(() => r.got).toEqual(['first']);
    // logrotate's default: the file renamed, the writer still appending to it for a moment, a new file made
    await appendFile(log, 'second\n');
    await rename(log, `${log}.1`);
    await appendFile(`${log}.1`, 'third\n');
    await writeFile(log, 'fourth\n');
    await expect.poll(() => r.got).toEqual(['first', 'second', 'third', 'fourth']);
    // copytruncate: the same file emptied, then written again from its start
    await truncate(log, 0);
    await sleep(60);
    await appendFile(log, 'fifth\n');
    await expect.poll(() => r.got).toEqual(['first', 'second', 'third', 'fourth', 'fifth']);
    r.stop();
    await r.done;
  });

  it('cuts a line at 8 KiB, on a character boundary, and drops the rest of it', async () => {
    const long = 'é'.repeat(5000); // 10 000 bytes
    const { source } = await appDirWith({ 'service.log': `${long}\nshort\n` });
    const r = reader(source, { lines: 10, follow: false });
    await r.done;
    expect(r.got).toHaveLength(2);
    expect(Buffer.byteLength(r.got[0]!)).toBeLessThanOrEqual(MAX_LINE_BYTES);
    expect(r.got[0]).toBe('é'.repeat(MAX_LINE_BYTES / 2));
    expect(r.got[1]).toBe('short');
  });

  it('a follow passes at most the rate a second and says in one line how many it skipped', async () => {
    const { source, dir } = await appDirWith({ 'service.log': numbered(1, 20).join('\n') + '\n' });
    const r = reader(source, { lines: 20, follow: true, linesPerSecond: 100 });
    await expect.poll(() => r.got.length).toBe(20);
    await appendFile(path.join(dir, 'service.log'), numbered(21, 1020).join('\n') + '\n');
    // the 20 asked for pass on top of the rate; then 100 of the 1000 new lines, and the marker once the second is over
    await expect.poll(() => r.got.at(-1), { timeout: 3_000 }).toMatch(/skipped/);
    expect(r.got.slice(20, 120)).toEqual(numbered(21, 120));
    expect(r.got.slice(120)).toEqual(['[kiln] 900 lines skipped: over 100 lines or 1024 KiB a second']);
    r.stop();
    await r.done;
  });

  it('lists the processes that have service files, web first', async () => {
    const { source } = await appDirWith({ 'service-worker.json': '{}', 'service.json': '{}', 'service-cron.json': '{}', 'service.log': '', 'supervisor.json': '{}' });
    expect(await appProcesses(source)).toEqual(['web', 'cron', 'worker']);
    expect(await logProcesses(source, 'worker')).toEqual(['worker']);
    await expect(logProcesses(source, 'mailer')).rejects.toMatchObject({ code: 'KILN_PROCESS_NOT_FOUND', message: 'app shop has no process mailer here: it has web, cron, worker' });
    await expect(logProcesses({ kind: 'process', app: 'shop', appDir: '/nonexistent' })).rejects.toMatchObject({ code: 'KILN_PROCESS_NOT_FOUND' });
  });
});

/** journalctl and systemctl stand-ins: journalctl prints its arguments and two lines, then (following) waits to be killed. */
async function fakeSystemd(): Promise<{ source: LogSource; pidFile: string; bin: string }> {
  const bin = await tempDir('kiln-fake-systemd-');
  const pidFile = path.join(bin, 'journalctl.pid');
  await writeFile(
    path.join(bin, 'journalctl'),
    `#!/bin/sh\necho $$ > ${pidFile}\necho "args: $*"\necho "journal line 1"\nprintf 'journal line 2\\r\\n'\ncase "$*" in *--follow*) exec sleep 1000;; esac\n`,
  );
  await writeFile(path.join(bin, 'systemctl'), `#!/bin/sh\necho "kiln-app-shop.worker.service loaded active running kiln app shop (worker)"\necho "kiln-app-shop.service loaded active running kiln app shop"\necho "kiln-app-shopping.service loaded active running kiln app shopping"\n`);
  await chmod(path.join(bin, 'journalctl'), 0o755);
  await chmod(path.join(bin, 'systemctl'), 0o755);
  return { bin, pidFile, source: { kind: 'systemd', app: 'shop', journalctl: path.join(bin, 'journalctl'), systemctl: path.join(bin, 'systemctl') } };
}

describe('the journal (systemd)', () => {
  it('runs journalctl -u UNIT -n N -o cat, and kills it when the follow ends', async () => {
    const { source, pidFile } = await fakeSystemd();
    expect(await appProcesses(source)).toEqual(['web', 'worker']);
    const once = reader(source, { process: 'worker', lines: 7, follow: false });
    await once.done;
    expect(once.got).toEqual(['args: -u kiln-app-shop.worker.service -n 7 -o cat --no-pager', 'journal line 1', 'journal line 2']);

    const r = reader(source, { lines: 3, follow: true });
    await expect.poll(() => r.got).toEqual(['args: -u kiln-app-shop.service -n 3 -o cat --no-pager --follow', 'journal line 1', 'journal line 2']);
    const pid = Number(await readFile(pidFile, 'utf8'));
    expect(isAlive(pid)).toBe(true);
    r.stop();
    await r.done;
    await expect.poll(() => isAlive(pid)).toBe(false);
  });

  it('a journalctl that fails or is missing is KILN_LOGS_FAILED', async () => {
    const bin = await tempDir('kiln-fake-systemd-');
    await writeFile(path.join(bin, 'journalctl'), '#!/bin/sh\necho "No journal files were found." >&2\nexit 1\n');
    await chmod(path.join(bin, 'journalctl'), 0o755);
    await expect(readAppLogs({ source: { kind: 'systemd', app: 'shop', journalctl: path.join(bin, 'journalctl') }, process: 'web', lines: 5, follow: false, onLines: () => undefined })).rejects.toMatchObject({
      code: 'KILN_LOGS_FAILED',
      message: expect.stringContaining('No journal files were found.'),
    });
    await expect(readAppLogs({ source: { kind: 'systemd', app: 'shop', journalctl: path.join(bin, 'nope') }, process: 'web', lines: 5, follow: false, onLines: () => undefined })).rejects.toMatchObject({ code: 'KILN_LOGS_FAILED' });
  });
});

describe('the agent\'s log streams', () => {
  it('answers log-start, bounded log-lines frames, log-end; refuses past its limit; ends every follow at once', async () => {
    const { source, pidFile } = await fakeSystemd();
    const sent: Outgoing[] = [];
    const logs = createAgentLogs({ source, log: quietLog(), send: (m) => (sent.push(m), true), maxStreams: 1 });
    logs.request({ type: 'log-request', v: PROTOCOL_VERSION, id: 'l-1', process: 'worker', lines: 2, follow: true });
    await expect.poll(() => sent.filter((m) => m.type === 'log-lines').flatMap((m) => (m.type === 'log-lines' ? m.lines : []))).toHaveLength(3);
    expect(sent[0]).toEqual({ type: 'log-start', id: 'l-1', processes: ['worker'] });
    expect(sent[1]).toMatchObject({ type: 'log-lines', id: 'l-1', process: 'worker' });
    // every frame the agent sends parses on the controller's side
    for (const m of sent) expect(parseFrame(JSON.stringify({ ...m, v: PROTOCOL_VERSION }), 'agent')).toMatchObject(m);
    logs.request({ type: 'log-request', v: PROTOCOL_VERSION, id: 'l-2', lines: 2, follow: false });
    expect(sent.at(-1)).toMatchObject({ type: 'log-end', id: 'l-2', error: { code: 'KILN_LOGS_BUSY' } });
    const pid = Number(await readFile(pidFile, 'utf8'));
    // the connection dropped: the follow ends, journalctl with it
    logs.closeAll();
    await expect.poll(() => sent.at(-1)).toEqual({ type: 'log-end', id: 'l-1' });
    await expect.poll(() => isAlive(pid)).toBe(false);
    // an unknown process ends the stream with its code
    logs.request({ type: 'log-request', v: PROTOCOL_VERSION, id: 'l-3', process: 'mailer', lines: 2, follow: false });
    await expect.poll(() => sent.at(-1)).toMatchObject({ type: 'log-end', id: 'l-3', error: { code: 'KILN_PROCESS_NOT_FOUND' } });
  });

  it('splits lines into frames of at most 500 lines and 256 K characters, which parse', () => {
    const many = frameBatches(Array.from({ length: 1201 }, (_, i) => `l${i}`));
    expect(many.map((b) => b.length)).toEqual([MAX_LOG_FRAME_LINES, MAX_LOG_FRAME_LINES, 201]);
    const big = frameBatches(Array.from({ length: 100 }, () => 'x'.repeat(MAX_LINE_BYTES)));
    expect(big.map((b) => b.length)).toEqual([32, 32, 32, 4]);
    for (const lines of big) expect(parseFrame(JSON.stringify({ type: 'log-lines', v: PROTOCOL_VERSION, id: 'l-1', process: 'web', lines }), 'agent').type).toBe('log-lines');
    // the receiver holds the bounds too: a frame past them, a line too long, a bad process name or the wrong direction is refused
    const refused = [
      { type: 'log-lines', id: 'l-1', process: 'web', lines: [...big[0]!, 'x'] },
      { type: 'log-lines', id: 'l-1', process: 'web', lines: ['x'.repeat(MAX_LINE_BYTES + 1)] },
      { type: 'log-request', id: 'l-1', process: '../etc', lines: 1, follow: false },
      { type: 'log-request', id: 'l-1', lines: 10_001, follow: false },
    ];
    expect(MAX_LOG_FRAME_CHARS).toBe(32 * MAX_LINE_BYTES);
    for (const f of refused) expect(() => parseFrame(JSON.stringify({ ...f, v: PROTOCOL_VERSION }), f.type === 'log-lines' ? 'agent' : 'controller'), JSON.stringify(f).slice(0, 80)).toThrow(expect.objectContaining({ code: 'KILN_FRAME_INVALID' }));
    expect(() => parseFrame(JSON.stringify({ type: 'log-request', v: PROTOCOL_VERSION, id: 'l-1', lines: 1, follow: false }), 'agent')).toThrow(/does not send "log-request"/);
  });
});
