import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { KilnError, hasErrno } from '@kiln/shared';

// sbin directories are searched too: a non-login root shell may not have them on PATH.
const EXTRA_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of an executable on PATH (or in the sbin directories), or null. */
export function findTool(name: string, envPath: string = process.env.PATH ?? ''): string | null {
  for (const dir of [...envPath.split(':').filter(Boolean), ...EXTRA_DIRS]) {
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch (err) {
      if (!hasErrno(err, 'ENOENT', 'EACCES', 'ENOTDIR')) throw err; // else not here
    }
  }
  return null;
}

export interface NspawnTools {
  nspawn: string;
  nsenter: string;
  unshare: string;
  setpriv: string;
  /** null unless asked for (only building a base image needs it) */
  debootstrap: string | null;
}

const INSTALL_HINT = 'install with: apt-get install systemd-container debootstrap';

/**
 * Why this host cannot run nspawn machines, or null when it can. Tests use the reason to name
 * what they skip; `checkNspawnHost` throws it.
 */
export function nspawnHostProblem(opts: { debootstrap?: boolean } = {}): string | null {
  if (process.platform !== 'linux') return `not Linux (${process.platform})`;
  if (process.getuid?.() !== 0) return 'not root';
  const missing = ['systemd-nspawn', 'nsenter', 'unshare', 'setpriv', ...(opts.debootstrap === false ? [] : ['debootstrap'])].filter((t) => !findTool(t));
  if (missing.length) return `no ${missing.join(', no ')}`;
  return null;
}

/** The tools nspawn machines need, or KILN_NSPAWN_UNAVAILABLE saying what is missing and how to get it. */
export function checkNspawnHost(opts: { debootstrap?: boolean } = {}): NspawnTools {
  const problem = nspawnHostProblem(opts);
  if (problem) {
    const hint = problem === 'not root' || problem.startsWith('not Linux') ? 'nspawn machines need root on Linux' : INSTALL_HINT;
    throw new KilnError('KILN_NSPAWN_UNAVAILABLE', `cannot run nspawn machines here: ${problem}; ${hint}`, { details: { problem } });
  }
  return {
    nspawn: findTool('systemd-nspawn')!,
    nsenter: findTool('nsenter')!,
    unshare: findTool('unshare')!,
    setpriv: findTool('setpriv')!,
    debootstrap: opts.debootstrap === false ? null : findTool('debootstrap'),
  };
}
