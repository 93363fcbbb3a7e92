import { bootMachine, type BootMachineOptions, type Machine } from './nspawn-machine.js';

export interface MachineGroup {
  /** boots a machine and keeps track of it until it stops */
  boot(opts: BootMachineOptions): Promise<Machine>;
  /** the machines booted through this group that still run */
  running(): Machine[];
  /** kills every machine of the group that still runs and waits until they are gone */
  cleanupAll(): Promise<void>;
}

/**
 * Machines that belong together (a test file, a provider): one call stops them all. They also die
 * with this process, whatever kills it (see bootMachine), so this is for orderly ends.
 */
export function createMachineGroup(): MachineGroup {
  const live = new Set<Machine>();
  return {
    async boot(opts) {
      const m = await bootMachine(opts);
      live.add(m);
      // Gone from the group however it ended: a failed end is for whoever awaits `exited`.
      const forget = () => void live.delete(m);
      m.exited.then(forget, forget);
      return m;
    },
    running: () => [...live].filter((m) => m.running()),
    async cleanupAll() {
      // Every machine is asked to stop before any failure is thrown.
      const kills = await Promise.allSettled([...live].map((m) => m.kill()));
      live.clear();
      const failed = kills.flatMap((k) => (k.status === 'rejected' ? [k.reason as unknown] : []));
      if (failed.length) throw new AggregateError(failed, `${failed.length} machine(s) of the group could not be stopped`);
    },
  };
}
