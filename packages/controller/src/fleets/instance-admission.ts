import { keyFingerprint, verifyIdentity, type AgentIdentity, type ErrorCode } from '@kiln/shared';
import type { Fleet } from './fleet-model.js';
import type { InstanceRecord, InstanceRecords } from './instance-records.js';

/** What the controller accepts from the holders of a fleet's agent credential (buildServer's `instances` option). */
export interface InstanceLimits {
  /**
   * A fleet may hold max(capFactor × size, size + capExtra) instances outside its groups (the
   * instances its provider launched do not count): agents on hosts of a fleet without a provider,
   * and what is left of terminated groups until it expires. A hello past it is refused.
   */
  capFactor: number;
  capExtra: number;
  /** the record of an instance outside its fleet's groups is dropped once it has been away this long */
  expireAfterMs: number;
  /** a connection that sends no hello within this is closed, leaving nothing behind */
  helloTimeoutMs: number;
}

export const DEFAULT_INSTANCE_LIMITS: InstanceLimits = { capFactor: 2, capExtra: 10, expireAfterMs: 24 * 3_600_000, helloTimeoutMs: 10_000 };

/** The most instances a fleet of `size` may hold outside its groups. */
export const instanceCap = (size: number, l: InstanceLimits) => Math.max(l.capFactor * size, size + l.capExtra);

// Fleet records are replaced, never changed: one set of group members per record, made once.
const members = new WeakMap<Fleet, Set<string>>();
/** Whether the fleet's provider launched `instanceId` into one of its groups (live, standby or launching). */
export function inGroup(fleet: Fleet, instanceId: string): boolean {
  let set = members.get(fleet);
  if (!set) members.set(fleet, (set = new Set(fleet.groups.flatMap((g) => g.instances))));
  return set.has(instanceId);
}

export type Admission = { ok: true; record: InstanceRecord; pinned: boolean } | { ok: false; code: ErrorCode; message: string; log?: Record<string, unknown> };

/**
 * Whether a hello's sender may be `instanceId` of `fleet`: its signature must cover this
 * connection's nonce; an instance seen before must prove the key pinned at its first hello; a new
 * one is pinned to the key it proves, within the fleet's cap. Pins nothing on a refusal.
 */
export function admit(a: { records: InstanceRecords; limits: InstanceLimits; fleet: Fleet; instanceId: string; identity: AgentIdentity; nonce: string }): Admission {
  const { records, fleet, instanceId, identity } = a;
  if (!verifyIdentity(identity, a.nonce, instanceId)) {
    return { ok: false, code: 'KILN_UNAUTHORIZED', message: `the hello's identity signature does not verify for ${instanceId} over this connection's nonce (a hello made for another connection, or by another key)` };
  }
  const known = records.get(instanceId);
  if (known) {
    if (known.fleet !== fleet.name) return { ok: false, code: 'KILN_FORBIDDEN', message: `instance ${instanceId} belongs to another fleet` };
    if (known.publicKey !== identity.publicKey) {
      return {
        ok: false,
        code: 'KILN_INSTANCE_KEY_MISMATCH',
        message: `instance ${instanceId} of fleet ${fleet.name} is pinned to the agent key ${keyFingerprint(known.publicKey)} (since ${known.pinnedAt}); this agent proved ${keyFingerprint(identity.publicKey)}. If that host is yours and lost its key, relaunch the instance (a new instance gets a new id); the pin also expires once no agent with it has connected for the expiry window`,
        log: { pinned: keyFingerprint(known.publicKey), offered: keyFingerprint(identity.publicKey), pinnedAt: known.pinnedAt },
      };
    }
    return { ok: true, record: known, pinned: false };
  }
  if (!inGroup(fleet, instanceId)) {
    const cap = instanceCap(fleet.size, a.limits);
    // Counted only near the cap: below it, every instance of the fleet together is fewer than the cap.
    const all = records.count(fleet.name);
    const outside = all < cap ? all : records.of(fleet.name).filter((r) => !inGroup(fleet, r.instanceId)).length;
    if (outside >= cap) {
      return {
        ok: false,
        code: 'KILN_INSTANCE_LIMIT',
        message: `fleet ${fleet.name} (size ${fleet.size}) already holds ${outside} instances outside its groups, its limit of max(${a.limits.capFactor} × size, size + ${a.limits.capExtra}) = ${cap}; a new instance ${instanceId} is refused. If the fleet has grown, raise its size (\`kiln fleet update ${fleet.name} --size N\`); instances away for the expiry window are dropped`,
        log: { outside, cap },
      };
    }
  }
  return { ok: true, record: records.pin(fleet.name, instanceId, identity.publicKey), pinned: true };
}
