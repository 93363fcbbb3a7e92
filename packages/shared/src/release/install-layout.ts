import path from 'node:path';
import { checkName } from './names.js';

/** Where everything of one app lives under a root; every install path is built here. */
export interface AppLayout {
  root: string;
  /** one install at a time per root, whatever the app */
  lock: string;
  appDir: string;
  state: string;
  journal: string;
  current: string;
  releases: string;
  meta: string;
  staging: string;
  /** persistent directories (`persist` in kiln.json), one per name, kept across releases: KILN_DATA_DIR */
  data: string;
  /** the fleet configs this app ran with (values and secret references, never secret values) */
  configs: string;
  /** the environment files with resolved secrets (mode 0600); under /run on a real host, so gone at reboot */
  run: string;
  release(version: string): string;
  /** the "complete" marker of a release: its manifest and signature, written after the rename */
  metaFile(version: string): string;
  /** the stamps of a release's files as written (path → fileStamp): beside the marker, read only by a later install */
  stampsFile(version: string): string;
}

export function appLayout(root: string, app: string): AppLayout {
  const base = path.join(path.resolve(root), 'var/lib/kiln');
  const appDir = path.join(base, 'apps', checkName('app', app));
  return {
    root: path.resolve(root),
    lock: path.join(base, 'install.lock'),
    appDir,
    state: path.join(appDir, 'state.json'),
    journal: path.join(appDir, 'journal.json'),
    current: path.join(appDir, 'current'),
    releases: path.join(appDir, 'releases'),
    meta: path.join(appDir, 'meta'),
    staging: path.join(appDir, 'staging'),
    data: path.join(appDir, 'data'),
    configs: path.join(appDir, 'configs'),
    run: path.join(path.resolve(root), 'run/kiln/apps', app),
    release: (v) => path.join(appDir, 'releases', checkName('version', v)),
    metaFile: (v) => path.join(appDir, 'meta', `${checkName('version', v)}.json`),
    stampsFile: (v) => path.join(appDir, 'meta', `${checkName('version', v)}.stamps`),
  };
}
