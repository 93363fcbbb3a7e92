import {
  appLayout,
  currentVersion,
  loadState,
  readInstalledManifest,
  type AgentReport,
  type CommandResult,
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
}

/** The agent's own knowledge that is not on disk: the running operation, the last error, the queue. */
export interface LiveFacts {
  tree: TreeCheck;
  operation: AgentReport['operation'];
  lastError: AgentReport['lastError'];
  queued: number;
}

/** Builds a report from what is on disk (state, `current`, the image marker) plus the live facts. */
export async function collectReport(src: ReportSources, live: LiveFacts, now: Date): Promise<AgentReport> {
  const layout = appLayout(src.root, src.app);
  const [state, status] = await Promise.all([loadState(layout, src.app, src.log), src.service.status().catch(() => ({ active: false }))]);
  const cur = state.current;
  const lastFailure = state.last?.error ? { ...state.last.error, at: state.last.finishedAt } : null;
  return {
    instanceId: src.instanceId,
    imageId: src.imageId,
    app: src.app,
    channel: src.channel,
    agentVersion: src.agentVersion,
    image: src.marker?.release ?? null,
    installed: cur ? { version: cur.version, seq: cur.seq, manifestSha256: cur.manifestSha256, artifactSha256: cur.artifactSha256, via: cur.via, installedAt: cur.installedAt } : null,
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
  return checkTree(layout.release(version), installed.manifest.files, cache, now);
}

/** The latest command outcomes, for the hello frame: what finished while the controller was away. */
export function recentResults(commands: Operation[], max = 50): CommandResult[] {
  return commands.slice(-max).flatMap((op) =>
    op.commandId ? [{ commandId: op.commandId, outcome: op.outcome, version: op.version, ...(op.error ? { error: op.error } : {}), finishedAt: op.finishedAt }] : [],
  );
}
