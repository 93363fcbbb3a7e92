import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { KilnError } from '../errors/kiln-error.js';
import { hasErrno, ifErrno, ifMissing } from '../system/fs-errors.js';
import { isAlive, processStart } from '../system/process-alive.js';

interface LockOwner {
  pid: number;
  /** the owner's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for it */
  start: string | null;
  host: string;
  since: string;
}

function ownerAlive(owner: LockOwner): boolean {
  if (owner.host !== hostname()) return true; // a shared filesystem: never break another host's lock
  if (!isAlive(owner.pid)) return false;
  return owner.start === null || processStart(owner.pid) === owner.start;
}

export interface Lock {
  release(): Promise<void>;
}

/**
 * Takes the per-root install lock or throws KILN_BUSY naming the holder. A lock whose owner is dead
 * (or whose pid now belongs to another process) is stale: it is moved aside, never trusted.
 */
export async function acquireLock(file: string, what: string): Promise<Lock> {
  await mkdir(path.dirname(file), { recursive: true });
  const me: LockOwner = { pid: process.pid, start: processStart(process.pid), host: hostname(), since: new Date().toISOString() };
  for (let attempt = 0; attempt < 5; attempt++) {
    // Written whole under a private name, then linked into place: a reader never sees it half-written.
    const mine = `${file}.${process.pid}-${randomBytes(4).toString('hex')}`;
    await writeFile(mine, JSON.stringify({ ...me, what }));
    try {
      await link(mine, file);
      return { release: () => rm(file, { force: true }) };
    } catch (err) {
      if (!hasErrno(err, 'EEXIST')) throw err;
    } finally {
      await rm(mine, { force: true });
    }
    let owner: (LockOwner & { what?: string }) | undefined;
    let text = '';
    try {
      text = await readFile(file, 'utf8');
      owner = JSON.parse(text);
    } catch (err) {
      // Released meanwhile (ENOENT), or not JSON (a crash before its write reached the disk): look again.
      if (!hasErrno(err, 'ENOENT') && !(err instanceof SyntaxError)) throw err;
      owner = undefined;
    }
    if (!owner || typeof owner.pid !== 'number') continue;
    if (ownerAlive(owner)) {
      throw new KilnError('KILN_BUSY', `another install holds the lock ${file} (pid ${owner.pid}${owner.what ? `, ${owner.what}` : ''}, since ${owner.since}); retry when it finishes`, { details: { pid: owner.pid } });
    }
    // Stale: move it aside, then make sure what moved is the lock judged stale. Another breaker may
    // have replaced it with its own fresh lock in between: that one goes back.
    const aside = `${file}.stale-${randomBytes(4).toString('hex')}`;
    // ENOENT: another breaker moved it first.
    if (await ifMissing(rename(file, aside).then(() => true), false)) {
      // EEXIST: a third process took the lock meanwhile, and the fresh lock put aside cannot go back.
      if ((await readFile(aside, 'utf8')) !== text) await ifErrno(link(aside, file), ['EEXIST'], undefined);
      await rm(aside, { force: true });
    }
  }
  throw new KilnError('KILN_BUSY', `could not take the install lock ${file}: it keeps changing hands`);
}
