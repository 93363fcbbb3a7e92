import type { ServiceSpec } from '../release/release-schema.js';

export interface ServiceStatus {
  active: boolean;
  /** the app's main process, when it runs */
  pid: number | null;
  /** the release directory the running process was started from */
  release: string | null;
  /** the port the app was given (the instance's PORT, else the manifest's), for the health check */
  port: number | null;
}

/**
 * How the install routine starts and stops the app: the built-in process supervisor, or systemd.
 * The app always runs from the `current` symlink, so a restart picks up a swapped release.
 */
export interface ServiceManager {
  readonly kind: string;
  /** (Re)starts the app from `current`; resolves once the new process has been started. */
  restart(spec: ServiceSpec): Promise<void>;
  /** Stops the app cleanly (SIGTERM, then SIGKILL past the spec's stop timeout). */
  stop(): Promise<void>;
  status(): Promise<ServiceStatus>;
}
