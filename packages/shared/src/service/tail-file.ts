import { open } from 'node:fs/promises';
import { ifMissing } from '../system/fs-errors.js';

/** The last `lines` lines of a file (reading at most its last 64 KiB); none when it does not exist. */
export async function tailFile(file: string, lines: number): Promise<string[]> {
  const fh = await ifMissing(open(file, 'r'), undefined);
  if (!fh) return [];
  try {
    const { size } = await fh.stat();
    const len = Math.min(size, 64 * 1024);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const all = buf.toString('utf8').split('\n');
    if (all.at(-1) === '') all.pop();
    // A cut first line is a piece of a line: dropped unless the file is read whole.
    if (len < size) all.shift();
    return all.slice(-lines);
  } finally {
    await fh.close();
  }
}
