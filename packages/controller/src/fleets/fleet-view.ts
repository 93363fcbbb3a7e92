import type { AgentHub, HubInstance } from './agent-hub.js';
import type { Fleet } from './fleet-model.js';

export type DriftState = 'in-sync' | 'off-image' | 'drifted' | 'unreachable';

/** One instance as `kiln status` and `kiln drift` show it. */
export interface InstanceRow {
  instanceId: string;
  connected: boolean;
  /** when its agent was last heard by this controller; null: never (an instance of the live group whose agent never reported here) */
  lastSeen: string | null;
  imageId: string | null;
  /** the release baked into its image */
  image: string | null;
  desired: string | null;
  installed: string | null;
  /** the fleet config version the fleet's desired state binds to its release (null: none) */
  desiredConfig: number | null;
  /** the config version the instance's app runs with (null: none, or not reported) */
  config: number | null;
  via: string | null;
  /** what the install of `installed` read from the bucket, of what a download of the whole release reads (null: not reported, agents before 0.4.0) */
  fetchedBytes: number | null;
  releaseBytes: number | null;
  tree: string;
  operation: string | null;
  lastError: string | null;
  /** the fleet group it belongs to (provider fleets) */
  group?: string | null;
  /** in-sync: runs the desired release and config, tree intact, as baked or installed at boot; off-image: the desired release and config but changed in place (a hotfix; heal replaces it); drifted: not the desired release or config, or a modified tree */
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
  const configOk = (r?.config?.sha256 ?? null) === (fleet.desired?.config?.sha256 ?? null);
  let drift: DriftState;
  if (!i.connected) drift = 'unreachable';
  else if (!fleet.desired || installedSha !== fleet.desired.manifestSha256 || !configOk || !treeOk) drift = 'drifted';
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
    desiredConfig: fleet.desired?.config?.seq ?? null,
    config: r?.config?.seq ?? null,
    via: r?.installed?.via ?? null,
    fetchedBytes: r?.installed?.fetchedBytes ?? null,
    releaseBytes: r?.installed?.releaseBytes ?? null,
    tree: !t ? 'unknown' : t.status === 'modified' ? `modified (${t.modified} changed, ${t.missing} missing, ${t.extra} extra)` : t.status,
    operation: r?.operation ? `${r.operation.op} ${r.operation.version} at ${r.operation.step}` : null,
    lastError: r?.lastError ? lastErrorLine(r.lastError) : null,
    drift,
  };
}

/**
 * An instance of the fleet's live group whose agent never reported to this controller: it was
 * launched and the fleet counts on it, so it is shown unreachable rather than left out (a
 * controller that came back on another address, an agent that cannot start).
 */
function unreportedRow(fleet: Fleet, instanceId: string, group: Fleet['groups'][number]): InstanceRow {
  return {
    instanceId,
    connected: false,
    lastSeen: null,
    imageId: group.image,
    image: null,
    desired: fleet.desired?.version ?? null,
    installed: null,
    desiredConfig: fleet.desired?.config?.seq ?? null,
    config: null,
    via: null,
    fetchedBytes: null,
    releaseBytes: null,
    tree: 'unknown',
    operation: null,
    lastError: null,
    group: group.name,
    drift: 'unreachable',
  };
}

/**
 * The fleet's instances: on a provider, those of its live (or launching) group, and agents outside
 * any group that are connected; a stopped group's instances and terminated ones are not shown. An
 * instance of the live group no agent reports for is unreachable, never absent: "0 instances" or
 * "in sync" for a fleet whose group runs 3 would be untrue.
 */
export function fleetRows(fleet: Fleet, hub: AgentHub): InstanceRow[] {
  const inGroup = new Map(fleet.groups.flatMap((g) => g.instances.map((id) => [id, g] as const)));
  const shown = (i: HubInstance) => (fleet.groups.length === 0 ? true : inGroup.has(i.instanceId) ? inGroup.get(i.instanceId)!.state !== 'standby' : i.connected);
  const rows: InstanceRow[] = hub
    .instances(fleet.name)
    .filter(shown)
    .map((i) => ({ ...instanceRow(fleet, i), group: inGroup.get(i.instanceId)?.name ?? null }));
  // Only the live group's: a launching group's instances are still on their way to their first report.
  for (const g of fleet.groups.filter((g) => g.state === 'live')) {
    for (const id of g.instances) if (hub.get(id)?.fleet !== fleet.name) rows.push(unreportedRow(fleet, id, g));
  }
  return rows.sort((a, b) => a.instanceId.localeCompare(b.instanceId));
}

export function summarize(rows: InstanceRow[]): FleetSummary {
  const count = (d: DriftState) => rows.filter((r) => r.drift === d).length;
  const s = { instances: rows.length, inSync: count('in-sync'), offImage: count('off-image'), drifted: count('drifted'), unreachable: count('unreachable') };
  return { ...s, line: `${s.instances} instances: ${s.inSync} in sync, ${s.offImage} off their image (hotfixed), ${s.drifted} drifted, ${s.unreachable} unreachable` };
}

/** An agent's last error in one line a person acts on: its code and the first line of its message ("KILN_APP_CRASHED: web exited with code 3 (5 restarts in 8 s)"). */
function lastErrorLine(e: { code: string; message: string }): string {
  const first = e.message.split('\n')[0]!.replace(/; its last lines:$/, '');
  return `${e.code}: ${first.length > 160 ? `${first.slice(0, 159)}…` : first}`;
}
