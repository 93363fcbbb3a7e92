import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { acquireLock, hasErrno, ifMissing, isAlive, isKilnError, isPollTimeout, KilnError, pollUntil, type Lock, type Logger } from '@kiln/shared';
import { cgroupsPopulated, createMachineCgroups, machineCgroupDirs, removeMachineCgroups } from './machine-cgroup.js';
import { machineCommand, START_FAILURES, type MachineBind, type MachineLayout } from './nspawn-command.js';
import { execInMachine, type MachineExecOptions, type MachineExecResult } from './nspawn-exec.js';
import { checkNspawnHost, type NspawnTools } from './nspawn-host.js';
import { childPids, processName } from '../../system/process-tree.js';

export type { MachineBind };

export interface BootMachineOptions {
  /** the root filesystem to boot; only read, never written */
  image: string;
  /** the machine's writable layer; keeps its changes across reboots of the same instance */
  upperDir: string;
  /** machine and host name: letters, digits and dashes */
  name: string;
  binds?: MachineBind[];
  /** the host's node binary, bind-mounted read-only at /usr/bin/node; false for none (default: this process's) */
  node?: string | false;
  log: Logger;
  bootTimeoutMs: number;
  /** resolved tools (default: looked up, KILN_NSPAWN_UNAVAILABLE when missing) */
  tools?: NspawnTools;
}

export interface MachineExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Machine {
  readonly name: string;
  /** the systemd-nspawn process */
  readonly pid: number;
  /** the machine's systemd (PID 1 inside), as a host pid */
  readonly pid1: number;
  /** the running machine's filesystem as seen from the host (/proc/PID1/root) */
  readonly root: string;
  readonly upperDir: string;
  /** settles when the machine has stopped and its cgroups are gone */
  readonly exited: Promise<MachineExit>;
  running(): boolean;
  /** the last lines the machine printed on its console */
  console(): string;
  exec(argv: readonly string[], opts?: MachineExecOptions): Promise<MachineExecResult>;
  systemctl(...args: string[]): Promise<MachineExecResult>;
  /** waits until `systemctl is-active unit` says active, else KILN_MACHINE_TIMEOUT */
  waitUnitActive(unit: string, timeoutMs: number): Promise<void>;
  /** pulls the plug: SIGKILL to the machine's systemd and to systemd-nspawn */
  kill(): Promise<MachineExit>;
  /** clean shutdown (systemd stops every unit), SIGKILL past the deadline (default 10 s) */
  poweroff(opts?: { timeoutMs?: number }): Promise<MachineExit>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/;
const CONSOLE_KEEP = 16 * 1024;

/**
 * Boots `image` with its own systemd (systemd-nspawn --boot) over an overlay whose upper layer is
 * `upperDir`. The machine shares the host's network (apps listen on 127.0.0.1 ports of the host).
 * If this process dies, the machine dies with it, and nothing is ever mounted on the host.
 */
export async function bootMachine(opts: BootMachineOptions): Promise<Machine> {
  const tools = opts.tools ?? checkNspawnHost({ debootstrap: false });
  const { name } = opts;
  if (!NAME.test(name)) throw new KilnError('KILN_NAME_INVALID', `machine name ${JSON.stringify(name)} must be letters, digits and dashes (at most 63)`);
  const log = opts.log.child({ module: 'nspawn-machine', machine: name });
  const image = path.resolve(opts.image);
  if (!existsSync(path.join(image, 'usr/lib/systemd/systemd')) && !existsSync(path.join(image, 'lib/systemd/systemd'))) {
    throw new KilnError('KILN_BASE_IMAGE_MISSING', `${image} is not a root filesystem with systemd (no /usr/lib/systemd/systemd)`, { details: { image } });
  }
  const upper = path.resolve(opts.upperDir);
  const layout: MachineLayout = {
    name,
    image,
    upper,
    work: `${upper}.work`,
    mnt: `${upper}.mnt`,
    cgroups: await machineCgroupDirs(name),
    node: opts.node === undefined ? process.execPath : opts.node || null,
    binds: opts.binds ?? [],
  };
  const command = machineCommand(tools, layout); // checks paths and binds before anything changes
  const { cgroups } = layout;
  await Promise.all([upper, layout.work, layout.mnt].map((d) => mkdir(d, { recursive: true })));
  // One machine per layer. systemd-nspawn's own lock cannot tell (see machineCommand).
  const layerLock: Lock = await acquireLock(`${upper}.lock`, `machine ${name}`).catch((err: unknown) => {
    throw isKilnError(err, 'KILN_BUSY') ? new KilnError('KILN_MACHINE_FAILED', `the layer ${upper} is in use: ${err.message}`, { cause: err }) : err;
  });
  try {
    if (await cgroupsPopulated(cgroups)) throw new KilnError('KILN_MACHINE_FAILED', `a machine named ${name} already runs`, { details: { name } });
    await removeMachineCgroups(cgroups);
    await createMachineCgroups(cgroups);
  } catch (err) {
    await layerLock.release();
    throw err;
  }

  const started = Date.now();
  const child = spawn(command.file, command.args, { stdio: ['ignore', 'pipe', 'pipe'], env: command.env });
  let consoleText = '';
  const keep = (chunk: Buffer) => {
    consoleText = (consoleText + chunk.toString('utf8')).slice(-CONSOLE_KEEP);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);

  let nspawnPid = 0;
  let pid1 = 0;
  let done = false;
  const exited = new Promise<MachineExit>((resolve, reject) => {
    child.on('error', (err) => {
      done = true;
      void layerLock.release().finally(() => reject(new KilnError('KILN_MACHINE_FAILED', `could not start machine ${name}: ${err.message}`, { cause: err })));
    });
    child.on('exit', (code, signal) => {
      done = true;
      // After the start script's unshare is reaped its pid namespace is gone, but a nspawn that was
      // killed may still be a zombie of init: what matters is that nothing is left in the cgroups.
      void (async () => {
        // Up to 5 s for them to empty; what is left then is removed (or warned about) all the same.
        await pollUntil({ check: async () => !(await cgroupsPopulated(cgroups)), timeoutMs: 5_000, intervalMs: 20 }).catch((err) => {
          if (!isPollTimeout(err)) throw err;
        });
        if (!(await removeMachineCgroups(cgroups))) log.warn({ cgroups }, 'machine cgroups still hold processes');
        // systemd-nspawn removes this itself unless it was killed.
        await ifMissing(rmdir(`/run/systemd/nspawn/propagate/${name}`), undefined);
        await layerLock.release();
        log.debug({ code, signal }, 'machine stopped');
        resolve({ code, signal });
      })();
    });
  });
  // The exit, or null when systemd-nspawn could not start: that failure is the boot's, thrown with its own code.
  const exitOf = exited.catch((err: unknown) => {
    log.debug({ err }, 'systemd-nspawn could not start');
    return null;
  });

  const killAll = () => {
    for (const p of [pid1, nspawnPid, child.pid ?? 0]) {
      if (!p) continue;
      try {
        process.kill(p, 'SIGKILL');
      } catch (err) {
        if (!hasErrno(err, 'ESRCH')) throw err; // else gone already
      }
    }
  };
  const failBoot = async (code: 'KILN_BOOT_TIMEOUT' | 'KILN_MACHINE_FAILED', message: string): Promise<never> => {
    killAll();
    const exit = await exitOf;
    const why = exit?.code != null ? START_FAILURES[exit.code] : undefined;
    const tail = consoleText.trim().split('\n').slice(-10).join('\n');
    throw new KilnError(code, `machine ${name}: ${why ?? message}${tail ? `\n${tail}` : ''}`, { details: { name, exit } });
  };

  const deadline = started + opts.bootTimeoutMs;
  // Each wait of the boot ends the machine when it exits, or when the boot deadline passes.
  const booting = <T>(check: () => T | undefined | Promise<T | undefined>, intervalMs: number) =>
    pollUntil({
      check: () => (done ? failBoot('KILN_MACHINE_FAILED', 'systemd-nspawn exited during boot') : check()),
      timeoutMs: deadline - Date.now(),
      intervalMs,
      timeoutError: () => failBoot('KILN_BOOT_TIMEOUT', `did not boot within ${opts.bootTimeoutMs} ms`),
    });
  try {
    // setpriv → unshare (waits) → its child in the new pid namespace (sh, then systemd-nspawn) → systemd
    pid1 = await booting(() => {
      nspawnPid = childPids(child.pid!).find((p) => processName(p) === 'systemd-nspawn') ?? 0;
      return nspawnPid ? childPids(nspawnPid).find((p) => processName(p) === 'systemd') : undefined;
    }, 10);
    const root = `/proc/${pid1}/root`;
    await booting(() => existsSync(`${root}/run/systemd/private`) || undefined, 10);
    const state = await booting(async () => {
      const argv = ['systemctl', 'is-system-running', '--wait'];
      const r = await execInMachine({ nsenter: tools.nsenter, pid1, machine: name, argv, timeoutMs: Math.max(1, deadline - Date.now()) }).catch(() => null);
      const state = r?.stdout.trim();
      if (state === 'maintenance' || state === 'stopping' || state === 'offline') return failBoot('KILN_MACHINE_FAILED', `booted into state ${state}`);
      return state === 'running' || state === 'degraded' ? state : undefined;
    }, 20);
    if (state === 'degraded') log.warn('machine booted degraded (a unit failed)');
  } catch (err) {
    killAll();
    await exitOf;
    throw err;
  }
  log.debug({ ms: Date.now() - started, pid: nspawnPid, pid1 }, 'machine running');

  const requireRunning = () => {
    if (done) throw new KilnError('KILN_MACHINE_FAILED', `machine ${name} is not running`, { details: { name } });
  };
  const exec = async (cmd: readonly string[], execOpts: MachineExecOptions = {}) => {
    requireRunning();
    return execInMachine({ nsenter: tools.nsenter, pid1, machine: name, argv: cmd, ...execOpts });
  };
  const stopWithin = async (timeoutMs: number): Promise<MachineExit> => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => {
      timer = setTimeout(() => r('late'), timeoutMs);
    });
    const first = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (first !== 'late') return first;
    log.warn({ timeoutMs }, 'machine did not power off in time: killing it');
    killAll();
    return exited;
  };

  return {
    name,
    pid: nspawnPid,
    pid1,
    root: `/proc/${pid1}/root`,
    upperDir: upper,
    exited,
    running: () => !done,
    console: () => consoleText,
    exec,
    systemctl: (...args) => exec(['systemctl', ...args]),
    async waitUnitActive(unit, timeoutMs) {
      const until = Date.now() + timeoutMs;
      let state = '';
      await pollUntil({
        check: async () => {
          state = (await exec(['systemctl', 'is-active', unit], { timeoutMs: Math.max(1_000, until - Date.now()) })).stdout.trim();
          return state === 'active';
        },
        timeoutMs,
        intervalMs: 50,
        timeoutError: async () => {
          // The status only adds detail to the timeout: without it the timeout still says what it knows.
          const status = await exec(['systemctl', 'status', '--no-pager', '-n', '5', unit]).catch((err: unknown) => void log.debug({ err, unit }, 'cannot read the unit status'));
          return new KilnError('KILN_MACHINE_TIMEOUT', `unit ${unit} in machine ${name} is ${state || 'unknown'}, not active, after ${timeoutMs} ms\n${status?.stdout.trim() ?? ''}`, {
            details: { machine: name, unit, state },
          });
        },
      });
    },
    async kill() {
      killAll();
      return exited;
    },
    async poweroff(poweroffOpts = {}) {
      if (done) return exited;
      // systemd-nspawn turns SIGTERM into the container's halt signal (SIGRTMIN+3 to its systemd).
      if (isAlive(nspawnPid)) process.kill(nspawnPid, 'SIGTERM');
      return stopWithin(poweroffOpts.timeoutMs ?? 10_000);
    },
  };
}

