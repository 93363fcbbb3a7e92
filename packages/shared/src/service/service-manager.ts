import type { HookName, ServiceSpec } from '../release/release-schema.js';

export interface ProcessStatus {
  name: string;
  active: boolean;
  /** restarts since the process was last (re)started by kiln */
  restarts: number;
  /** how it last ended ("exit 3", "SIGKILL"), when it did */
  lastExit: string | null;
}

export interface ServiceStatus {
  /** every process runs */
  active: boolean;
  /** the main process (`web`), when it runs */
  pid: number | null;
  /** the release directory the running process was started from */
  release: string | null;
  /** the port the app was given (the instance's PORT, else the manifest's), for the health check */
  port: number | null;
  /** each process, `web` first */
  processes: ProcessStatus[];
}

/** What runs: every process of the release by name (`web` first) and the fleet's environment. */
export interface AppRun {
  processes: Record<string, ServiceSpec>;
  /**
   * KEY=VALUE lines (mode 0600) with the fleet's config and resolved secrets, read at every start:
   * the values never pass through a unit file, a service file or a command line.
   */
  envFile?: string;
  /** persistent directories the processes write to (systemd makes the rest of the system read-only) */
  dataDirs?: string[];
}

/** A hook to run as the app's user with the app's environment, in its own process group. */
export interface HookRun {
  name: HookName;
  command: string[];
  cwd: string;
  env: Record<string, string>;
  envFile?: string;
  dataDirs?: string[];
  timeoutMs: number;
  /** told the pid of the process group once it runs (the journal records it: recovery ends a hook left by a killed install) */
  onSpawn?: (pid: number) => void | Promise<void>;
}

export interface HookOutcome {
  /** null when it was killed (timeout) */
  code: number | null;
  timedOut: boolean;
  /** the last lines of its output (stdout and stderr together) */
  tail: string[];
  ms: number;
}

/**
 * How the install routine starts and stops the app: the built-in process supervisor, or systemd.
 * The app always runs from the `current` symlink, so a restart picks up a swapped release.
 */
export interface ServiceManager {
  readonly kind: string;
  /**
   * The app runs as a user of its own that cannot write the files an install writes (systemd's
   * DynamicUser): only then may two releases share a file's inode (docs/release-format.md).
   */
  readonly appReadOnly?: boolean;
  /** (Re)starts every process from `current` (and stops those the release no longer has); resolves once they have been started. */
  restart(run: AppRun): Promise<void>;
  /** Stops the app cleanly (SIGTERM, then SIGKILL past the spec's stop timeout). */
  stop(): Promise<void>;
  status(): Promise<ServiceStatus>;
  /** The last lines a process wrote (for an error a person can act on). */
  recentOutput(process: string, lines: number): Promise<string[]>;
  runHook(hook: HookRun): Promise<HookOutcome>;
}
