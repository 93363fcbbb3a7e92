import path from 'node:path';
import { z } from 'zod';
import { ServiceSpec } from '../release/release-schema.js';
import { peekJsonFile } from '../system/json-file.js';

/** What the supervisor daemon runs: written by the ServiceManager before every restart. */
export const ServiceFile = z.strictObject({
  spec: ServiceSpec,
  /** instance-level additions and overrides (e.g. PORT when several instances share a host) */
  env: z.record(z.string(), z.string()),
  /** the fleet's config and secrets (see AppRun.envFile), read at every start of the child */
  envFile: z.string().optional(),
});
export type ServiceFile = z.infer<typeof ServiceFile>;

/** What the supervisor daemon reports about itself and the app. */
export const SupervisorStatus = z.strictObject({
  daemonPid: z.number().int(),
  /** start times (processStart) of the daemon and the child: a pid alone is reused after a reboot */
  daemonStart: z.string().nullable(),
  childPid: z.number().int().nullable(),
  childStart: z.string().nullable(),
  /** the resolved release directory the child runs in */
  release: z.string().nullable(),
  /** grows with every (re)start the daemon was asked for */
  generation: z.number().int(),
  state: z.enum(['starting', 'running', 'backoff', 'stopped']),
  restarts: z.number().int(),
  lastExit: z.string().nullable(),
  updatedAt: z.string(),
});
export type SupervisorStatus = z.infer<typeof SupervisorStatus>;

/** The main process `web` keeps the names of the time when an app had one process; every other has its name in them. */
export const supervisorPaths = (appDir: string, proc = 'web') => {
  const tail = proc === 'web' ? '' : `-${proc}`;
  return {
    service: path.join(appDir, `service${tail}.json`),
    status: path.join(appDir, `supervisor${tail}.json`),
    log: path.join(appDir, `service${tail}.log`),
  };
};

// Both belong to another process (the daemon, the service manager): a reader that finds none, or one
// it cannot use, acts as when there is none (no status yet, no extra env).
export const readSupervisorStatus = (file: string): Promise<SupervisorStatus | undefined> => peekJsonFile(file, SupervisorStatus);
export const readServiceFile = (file: string): Promise<ServiceFile | undefined> => peekJsonFile(file, ServiceFile);
