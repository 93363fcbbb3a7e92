import { randomBytes } from 'node:crypto';
import { open, rename, rm, symlink } from 'node:fs/promises';
import path from 'node:path';

/** Temporary names carry this marker so start-up recovery can find and remove leftovers. */
export const TMP_MARK = '.kiln-tmp-';

const tmpName = (file: string) => path.join(path.dirname(file), `${TMP_MARK}${path.basename(file)}-${randomBytes(4).toString('hex')}`);

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes a file so that a reader (or a crash) sees either the old or the new content, never a mix. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const tmp = tmpName(file);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(path.dirname(file));
}

/** Points `link` at `target` atomically: a symlink under a temporary name, renamed over the old one. */
export async function swapSymlink(link: string, target: string): Promise<void> {
  const tmp = tmpName(link);
  await symlink(target, tmp);
  try {
    await rename(tmp, link);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(path.dirname(link));
}
