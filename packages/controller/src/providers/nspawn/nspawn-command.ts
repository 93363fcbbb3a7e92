import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { KilnError } from '@kiln/shared';
import type { NspawnTools } from './nspawn-host.js';

export interface MachineBind {
  /** a file or directory on the host; it must exist */
  host: string;
  /** where it appears in the machine (created in the machine's layer when missing) */
  container: string;
  readOnly?: boolean;
}

export interface MachineLayout {
  name: string;
  /** read-only lower layer */
  image: string;
  upper: string;
  /** overlayfs' scratch dir, on the upper layer's filesystem */
  work: string;
  /** the mount point, only ever mounted inside the machine's own mount namespace */
  mnt: string;
  cgroups: readonly string[];
  /** host file bind-mounted read-only at /usr/bin/node, or null */
  node: string | null;
  binds: readonly MachineBind[];
}

// Moves itself into the machine's cgroups, mounts the overlay in the private mount namespace
// unshare made (so the host never sees it and it vanishes with the machine), then becomes
// systemd-nspawn.
const START_SCRIPT = [
  'n=$1; shift',
  'while [ "$n" -gt 0 ]; do echo 0 > "$1/cgroup.procs" || exit 96; shift; n=$((n-1)); done',
  'mount -t overlay overlay -o "$1" "$2" || exit 97',
  'shift 2',
  'exec "$@"',
].join('\n');

/** What the start script's exit codes mean. */
export const START_FAILURES: Readonly<Record<number, string>> = { 96: 'could not move into its cgroup', 97: 'could not mount its overlay' };

/** nspawn reads backslash escapes in --bind paths and splits them on colons. */
function nspawnPath(p: string): string {
  return p.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
}

function checkOverlayPath(p: string, what: string): void {
  if (/[,:\\\n]/.test(p)) throw new KilnError('KILN_CONFIG_INVALID', `${what} ${p} holds a comma, colon or backslash, which an overlay mount cannot take`);
}

/**
 * The command line that runs a machine: setpriv (dies with this process) → unshare (own mount and
 * pid namespace; its child dies with it) → the start script → systemd-nspawn → the machine's systemd.
 * Whichever of them dies, everything after it dies too.
 */
export function machineCommand(tools: NspawnTools, m: MachineLayout): { file: string; args: string[]; env: Record<string, string> } {
  checkOverlayPath(m.image, 'image');
  checkOverlayPath(m.upper, 'upper dir');
  const nspawnArgs = ['-D', m.mnt, '--boot', '--register=no', '--keep-unit', '-q', `--machine=${m.name}`, `--hostname=${m.name}`];
  // The host's journal must not be linked in: the machine's journal stays in its own layer.
  nspawnArgs.push('--console=read-only', '--link-journal=no');
  // Seeds /etc/machine-id at an instance's first boot (later boots keep the one in its layer).
  nspawnArgs.push(`--uuid=${randomUUID()}`);
  if (m.node) nspawnArgs.push(`--bind-ro=${nspawnPath(m.node)}:/usr/bin/node`);
  for (const b of m.binds) {
    if (!existsSync(b.host)) throw new KilnError('KILN_CONFIG_INVALID', `bind source ${b.host} does not exist`, { details: { host: b.host } });
    if (!path.isAbsolute(b.container)) throw new KilnError('KILN_CONFIG_INVALID', `bind target ${b.container} must be an absolute path`);
    nspawnArgs.push(`${b.readOnly ? '--bind-ro' : '--bind'}=${nspawnPath(path.resolve(b.host))}:${nspawnPath(b.container)}`);
  }
  const overlay = `lowerdir=${m.image},upperdir=${m.upper},workdir=${m.work}`;
  return {
    file: tools.setpriv,
    args: [
      '--pdeathsig', 'KILL', '--',
      tools.unshare, '--mount', '--pid', '--fork', '--kill-child', '--propagation', 'private', '--',
      '/bin/sh', '-c', START_SCRIPT, 'kiln-machine', String(m.cgroups.length), ...m.cgroups, overlay, m.mnt, tools.nspawn, ...nspawnArgs,
    ],
    // SYSTEMD_NSPAWN_LOCK=0: nspawn's image lock is keyed by the overlay root's inode, new at each
    // boot, so it guards nothing here and a killed nspawn leaves its lock files in /run.
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', SYSTEMD_NSPAWN_LOCK: '0' },
  };
}
