import { open, stat, type FileHandle } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { ifMissing } from '../system/fs-errors.js';
import { createLineSplitter, type LineSplitter } from './line-splitter.js';

/** The last lines are looked for in at most this many bytes from the end: 10 000 lines of 800 bytes. */
const TAIL_READ_LIMIT = 8 * 1024 * 1024;
const CHUNK = 256 * 1024;

export interface FollowFileOptions {
  file: string;
  /** the last lines to send first (0: none) */
  lines: number;
  follow: boolean;
  onLines: (lines: string[]) => void;
  signal?: AbortSignal | undefined;
  /** how often a follow looks for new output (default 100 ms) */
  pollMs?: number | undefined;
}

/**
 * The last `lines` lines of a log file, then (with `follow`) every line written to it until the
 * signal aborts. A file rotated away (renamed, replaced) is read to its end and the new one from its
 * start; a file truncated in place is read again from its start; one not there yet is waited for.
 */
export async function followLogFile(o: FollowFileOptions): Promise<void> {
  const splitter = createLineSplitter();
  let fh = await ifMissing(open(o.file, 'r'), undefined);
  try {
    let pos = 0;
    if (fh) {
      const tail = await tailOf(fh, (await fh.stat()).size, o.lines, !o.follow);
      if (tail.lines.length) o.onLines(tail.lines);
      pos = tail.end;
    }
    const read = async (handle: FileHandle, size: number) => {
      pos = await readRange(handle, pos, size, splitter, o);
    };
    while (o.follow && !o.signal?.aborted) {
      await sleep(o.pollMs ?? 100, undefined, { signal: o.signal }).catch((err: Error) => {
        if (err.name !== 'AbortError') throw err;
      });
      if (o.signal?.aborted) break;
      const named = await ifMissing(stat(o.file), undefined);
      if (fh && named) {
        const held = await fh.stat();
        if (named.ino !== held.ino || named.dev !== held.dev) {
          // Rotated: what the old file got since the last look, then the new one from its start.
          await read(fh, held.size);
          const rest = splitter.flush();
          if (rest.length) o.onLines(rest);
          await fh.close();
          fh = undefined;
        }
      }
      if (!fh) {
        if (!named) continue;
        fh = await ifMissing(open(o.file, 'r'), undefined);
        pos = 0;
        if (!fh) continue;
      }
      const { size } = await fh.stat();
      if (size < pos) {
        pos = 0;
        splitter.reset();
      }
      await read(fh, size);
    }
  } finally {
    await fh?.close();
  }
}

/** Reads [pos, size) in chunks, passing whole lines on; returns where it stopped. */
async function readRange(fh: FileHandle, pos: number, size: number, splitter: LineSplitter, o: FollowFileOptions): Promise<number> {
  const buf = Buffer.alloc(Math.min(CHUNK, Math.max(0, size - pos)));
  while (pos < size && !o.signal?.aborted) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    pos += bytesRead;
    const lines = splitter.push(buf.subarray(0, bytesRead));
    if (lines.length) o.onLines(lines);
  }
  return pos;
}

/**
 * The last `n` lines before `size`, and `end`: where a follow goes on, after the last newline (a
 * line still being written comes whole with the follow; read once, it is the last line, as tail shows it).
 */
async function tailOf(fh: FileHandle, size: number, n: number, withPartial: boolean): Promise<{ lines: string[]; end: number }> {
  const chunks: Buffer[] = [];
  let start = size;
  let newlines = 0;
  // n + 1 newlines: the one before the first line wanted tells where it starts.
  while (start > 0 && newlines <= n && size - start < TAIL_READ_LIMIT) {
    const len = Math.min(64 * 1024, start);
    const buf = Buffer.alloc(len);
    start -= len;
    await fh.read(buf, 0, len, start);
    chunks.unshift(buf);
    for (let i = buf.indexOf(0x0a); i >= 0; i = buf.indexOf(0x0a, i + 1)) newlines++;
  }
  const data = Buffer.concat(chunks);
  const last = data.lastIndexOf(0x0a);
  // Read from the middle of the file, the first piece is the end of a line that started earlier
  // (none at all in what was read: a line longer than the read limit, nothing to show of it).
  const from = start > 0 ? (last < 0 ? data.length : data.indexOf(0x0a) + 1) : 0;
  const upTo = withPartial ? data.length : last + 1;
  let lines: string[] = [];
  if (n > 0 && from < upTo) {
    const splitter = createLineSplitter();
    lines = [...splitter.push(data.subarray(from, upTo)), ...(withPartial ? splitter.flush() : [])].slice(-n);
  }
  return { lines, end: last < 0 ? start : start + last + 1 };
}
