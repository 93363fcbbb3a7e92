import type { AgentHub, HubInstance } from './agent-hub.js';
import type { Fleet } from './fleet-model.js';

export type DriftState = 'in-sync' | 'off-image' | 'drifted' | 'unreachable';

/** One instance as `kiln status` and `kiln drift` show it. */
export interface InstanceRow {
  instanceId: string;
  connected: boolean;
  lastSeen: string;
  imageId: string | null;
  /** the release baked into its image */
  image: string | null;
  desired: string | null;
  installed: string | null;
  via: string | null;
  tree: string;
  operation: string | null;
  lastError: string | null;
  /** the fleet group it belongs to (provider fleets) */
  group?: string | null;
  /** in-sync: runs the desired release, tree intact, as baked or installed at boot; off-image: the desired release but changed in place (a hotfix; heal replaces it); drifted: not the desired release, or a modified tree */
  drift: DriftState;
}

export interface FleetSummary {
  instances: number;
  inSync: number;
  offImage: number;
  drifted: number;
  unreachable: number;
  line: string;
}

export function instanceRow(fleet: Fleet, i: HubInstance): InstanceRow {
  const r = i.report;
  const installedSha = r?.installed?.manifestSha256;
  const treeOk = r?.tree.status !== 'modified';
  let drift: DriftState;
  if (!i.connected) drift = 'unreachable';
  else if (!fleet.desired || installedSha !== fleet.desired.manifestSha256 || !treeOk) drift = 'drifted';
  // Changed in place since launch (a hotfix, a rollback, a manual install): heal replaces it.
  else if (!['baked', 'boot'].includes(r?.installed?.via ?? '')) drift = 'off-image';
  else drift = 'in-sync';
  const t = r?.tree;
  return {
    instanceId: i.instanceId,
    connected: i.connected,
    lastSeen: i.lastSeen,
    imageId: r?.imageId ?? null,
    image: r?.image?.version ?? null,
    desired: fleet.desired?.version ?? null,
    installed: r?.installed?.version ?? null,
    via: r?.installed?.via ?? null,
    tree: !t ? 'unknown' : t.status === 'modified' ? `modified (${t.modified} changed, ${t.missing} missing, ${t.extra} extra)` : t.status,
    operation: r?.operation ? `${r.operation.op} ${r.operation.version} at ${r.operation.step}` : null,
    lastError: r?.lastError ? `${r.lastError.code}` : null,
    drift,
  };
}

/**
 * The fleet's instances: on a provider, those of its live (or launching) group, and agents outside
 * any group that are connected; a stopped group's instances and terminated ones are not shown.
 */
export function fleetRows(fleet: Fleet, hub: AgentHub): InstanceRow[] {
  const inGroup = new Map(fleet.groups.flatMap((g) => g.instances.map((id) => [id, g] as const)));
  const shown = (i: HubInstance) => (fleet.groups.length === 0 ? true : inGroup.has(i.instanceId) ? inGroup.get(i.instanceId)!.state !== 'standby' : i.connected);
  return hub
    .instances(fleet.name)
    .filter(shown)
    .map((i) => ({ ...instanceRow(fleet, i), group: inGroup.get(i.instanceId)?.name ?? null }))
    .sort((a, b) => a.instanceId.localeCompare(b.instanceId));
}

export function summarize(rows: InstanceRow[]): FleetSummary {
  const count = (d: DriftState) => rows.filter((r) => r.drift === d).length;
  const s = { instances: rows.length, inSync: count('in-sync'), offImage: count('off-image'), drifted: count('drifted'), unreachable: count('unreachable') };
  return { ...s, line: `${s.instances} instances: ${s.inSync} in sync, ${s.offImage} off their image (hotfixed), ${s.drifted} drifted, ${s.unreachable} unreachable` };
}
