import { rm } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, acquireLock, appLayout, loadState, writeState, type Logger } from '@kiln/shared';
import { writeImageMarker, type ImageMarker } from './image-marker.js';

/**
 * Makes this root ready to become an image: the installed release is recorded as the image's baked
 * release (marker + `via: baked`), and the agent's per-instance files are removed.
 */
export async function sealImage(root: string, app: string, log: Logger, now = new Date()): Promise<ImageMarker> {
  const layout = appLayout(root, app);
  const lock = await acquireLock(layout.lock, `seal ${app}`);
  try {
    const state = await loadState(layout, app, log);
    if (!state.current) throw new KilnError('KILN_NOT_INSTALLED', `${app} has no installed release on ${layout.root} to bake into an image`);
    state.current = { ...state.current, via: 'baked' };
    // The builder's command history is not the instances': they start with none.
    state.commands = [];
    state.last = null;
    await writeState(layout.state, state);
    const agentDir = path.join(layout.root, 'var/lib/kiln/agent');
    // identity.key too: every instance of the image makes its own on first boot, or all would share the builder's.
    await Promise.all(['inbox.json', 'report.json', 'identity.key'].map((f) => rm(path.join(agentDir, f), { force: true })));
    const { version, seq, manifestSha256 } = state.current;
    return await writeImageMarker(root, app, { version, seq, manifestSha256 }, now);
  } finally {
    await lock.release();
  }
}
