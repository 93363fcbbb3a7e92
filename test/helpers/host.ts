import { readFile, readlink, rm } from 'node:fs/promises';
import path from 'node:path';
import { appLayout, createProcessSupervisor, InstallState, type InstallOptions, type ReleaseStore, type ServiceManager } from '@kiln/shared';
import { freePort, quietLog, tempDir, type Keys } from './release.js';

export interface Host {
  root: string;
  app: string;
  port: number;
  service: ServiceManager;
  /** options for install()/rollback() on this host */
  opts(extra?: Partial<InstallOptions>): Omit<InstallOptions, 'target'>;
  /** what `current` points to (a version) or null */
  current(): Promise<string | null>;
  /** state.json, parsed strictly */
  state(): Promise<InstallState>;
  /** GET / on the app's port: the body, or undefined when nothing answers */
  serving(): Promise<string | undefined>;
  stop(): Promise<void>;
}

/** A host root in a temp dir with the process supervisor and its own port. */
export async function makeHost(args: { store?: ReleaseStore; keys: Keys; app?: string }): Promise<Host> {
  const root = await tempDir('kiln-test-root-');
  const app = args.app ?? 'web';
  // Picked before anything starts: the supervisor hands it to the app (PORT) and the health check dials it.
  const port = await freePort();
  const layout = appLayout(root, app);
  const log = quietLog();
  const service = createProcessSupervisor({ appDir: layout.appDir, log, env: { PORT: String(port) } });
  return {
    root,
    app,
    port,
    service,
    opts: (extra = {}) => ({ root, app, keys: args.keys.keys, service, log, port, ...(args.store ? { store: args.store } : {}), ...extra }),
    current: async () => readlink(layout.current).then((t) => path.basename(t), () => null),
    state: async () => InstallState.parse(JSON.parse(await readFile(layout.state, 'utf8'))),
    serving: async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
        return (await res.text()).trim();
      } catch {
        return undefined;
      }
    },
    stop: async () => {
      await service.stop();
      // best effort: a test that mounted something inside the root unmounts and removes it itself
      await rm(root, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}
