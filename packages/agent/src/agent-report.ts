import { stat } from 'node:fs/promises';
import {
  appLayout,
  currentVersion,
  fetchedOf,
  ifMissing,
  loadState,
  readInstalledManifest,
  type AgentReport,
  type AppLayout,
  type CommandResult,
  type InstallState,
  type Logger,
  type Operation,
  type ServiceManager,
  type TreeCheck,
} from '@kiln/shared';
import type { ImageMarker } from './image-marker.js';
import { UNCHECKED, checkTree, type DigestCache } from './tree-check.js';

export interface ReportSources {
  root: string;
  instanceId: string;
  imageId: string;
  app: string;
  channel: string;
  agentVersion: string;
  marker: ImageMarker | undefined;
  service: ServiceManager;
  log: Logger;
  /** reads state.json (the running agent keeps it cached: see stateReader); default: read it each time */
  state?: () => Promise<InstallState>;
}

/** The agent's own knowledge that is not on disk: the running operation, the last error, the queue. */
export interface LiveFacts {
  tree: TreeCheck;
  operation: AgentReport['operation'];
  lastError: AgentReport['lastError'];
  queued: number;
}

/**
 * state.json, read again only when the file changed. The agent reads it for every report (about ten
 * per install) and after every job; reading and checking it each time cost a few percent of an
 * install's CPU. A stat tells whether it changed: every write of it is a new file renamed into place
 * (a new inode), and an edit in place changes its size, mtime or ctime. So a write by anyone (the
 * install routine, `kiln host install` on the same host) is seen by the next read. The state returned
 * is shared: callers only read it.
 */
export function stateReader(layout: AppLayout, app: string, log: Logger): () => Promise<InstallState> {
  let cached: { stamp: string; state: InstallState } | undefined;
  return async () => {
    // No state.json yet: loadState says what that means (and nothing is cached).
    const st = await ifMissing(stat(layout.state), undefined);
    const stamp = st ? `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}` : undefined;
    if (stamp && cached?.stamp === stamp) return cached.state;
    const state = await loadState(layout, app, log);
    // Stamped with the stat taken before the read: a write in between makes the next call read again.
    cached = stamp ? { stamp, state } : undefined;
    return state;
  };
}

/** Builds a report from what is on disk (state, `current`, the image marker) plus the live facts. */
export async function collectReport(src: ReportSources, live: LiveFacts, now: Date): Promise<AgentReport> {
  const layout = appLayout(src.root, src.app);
  // A report goes out whatever the service manager says: one that fails shows the app not running.
  const serviceStatus = src.service.status().catch((err: unknown) => {
    src.log.warn({ err }, 'cannot read the service status: reporting the app inactive');
    return { active: false };
  });
  const [state, status] = await Promise.all([src.state ? src.state() : loadState(layout, src.app, src.log), serviceStatus]);
  const cur = state.current;
  const lastFailure = state.last?.error ? { ...state.last.error, at: state.last.finishedAt } : null;
  return {
    instanceId: src.instanceId,
    imageId: src.imageId,
    app: src.app,
    channel: src.channel,
    agentVersion: src.agentVersion,
    image: src.marker?.release ?? null,
    installed: cur ? { version: cur.version, seq: cur.seq, manifestSha256: cur.manifestSha256, artifactSha256: cur.artifactSha256, via: cur.via, installedAt: cur.installedAt, ...fetchedOf(cur) } : null,
    // Its seq and digest only: what a config holds stays on the host.
    config: cur?.config ? { seq: cur.config.seq, sha256: cur.config.sha256 } : null,
    service: { active: status.active },
    tree: live.tree,
    operation: live.operation,
    lastError: live.lastError ?? lastFailure,
    queued: live.queued,
    at: now.toISOString(),
  };
}

/** Checks the tree `current` points to against its manifest. */
export async function treeCheckOf(root: string, app: string, cache: DigestCache, now: Date): Promise<TreeCheck> {
  const layout = appLayout(root, app);
  const version = await currentVersion(layout);
  const installed = version ? await readInstalledManifest(layout, version) : undefined;
  if (!version || !installed) return UNCHECKED;
  return checkTree(layout.release(version), installed.manifest.files, cache, now, installed.manifest.persist);
}

/** The latest command outcomes, for the hello frame: what finished while the controller was away. */
export function recentResults(commands: Operation[], max = 50): CommandResult[] {
  return commands.slice(-max).flatMap((op) =>
    op.commandId ? [{ commandId: op.commandId, outcome: op.outcome, version: op.version, ...(op.error ? { error: op.error } : {}), ...fetchedOf(op), finishedAt: op.finishedAt }] : [],
  );
}
