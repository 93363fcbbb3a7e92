import { AgentIdentity, InstanceId, isKilnError, type DocStore, type Logger } from '@kiln/shared';
import { z } from 'zod';

/** What the controller keeps of an instance across restarts: the fleet it belongs to and the key its agent proved at its first hello. */
export interface InstanceRecord {
  instanceId: string;
  fleet: string;
  /** the agent's ed25519 public key (raw, base64url), pinned at the first hello */
  publicKey: string;
  pinnedAt: string;
  /** when the controller last heard of it (a hello, a disconnect; the load for a record read at start), ms */
  seenAt: number;
}

/** One fleet's records in the bucket: `controller/instances/FLEET.json`. */
const FleetInstances = z.strictObject({
  fleet: z.string(),
  instances: z.record(InstanceId, z.strictObject({ publicKey: AgentIdentity.shape.publicKey, pinnedAt: z.string() })),
});

export interface InstanceRecords {
  /** Reads every fleet's records (at start). */
  load(): Promise<void>;
  get(instanceId: string): InstanceRecord | undefined;
  /** the records of one fleet */
  of(fleet: string): InstanceRecord[];
  all(): InstanceRecord[];
  /** how many records one fleet has */
  count(fleet: string): number;
  /** Records (pins) an instance; its fleet's document is written soon after. */
  pin(fleet: string, instanceId: string, publicKey: string): InstanceRecord;
  /** Removes records; their fleets' documents are written soon after. */
  remove(instanceIds: string[]): void;
  /** The controller stops: resolves once every change so far is in the bucket, or its write failed and was logged (no more retries). */
  flush(): Promise<void>;
}

const key = (fleet: string) => `controller/instances/${fleet}.json`;
const RETRY_MS = 5_000;

/**
 * The instance records, in memory and in the bucket, one document per fleet. Writes are coalesced
 * per fleet (one in flight, the next carries every change since): a thousand first hellos cost a
 * handful of writes, not a thousand. A record lost to a crash before its write costs nothing but a
 * new pin: the agent proves the same key again on its next hello.
 */
export function createInstanceRecords(opts: { docs: DocStore; log: Logger; now: () => Date }): InstanceRecords {
  const log = opts.log.child({ module: 'instances' });
  const records = new Map<string, InstanceRecord>();
  const byFleet = new Map<string, Set<string>>();
  const writing = new Map<string, Promise<void>>();
  const dirty = new Set<string>();
  let stopping = false;

  function add(r: InstanceRecord): void {
    records.set(r.instanceId, r);
    let set = byFleet.get(r.fleet);
    if (!set) byFleet.set(r.fleet, (set = new Set()));
    set.add(r.instanceId);
  }

  async function write(fleet: string): Promise<void> {
    const ids = [...(byFleet.get(fleet) ?? [])];
    if (ids.length === 0) return opts.docs.remove(key(fleet));
    const instances = Object.fromEntries(ids.map((id) => [id, { publicKey: records.get(id)!.publicKey, pinnedAt: records.get(id)!.pinnedAt }]));
    await opts.docs.put(key(fleet), { fleet, instances });
  }

  function schedule(fleet: string): void {
    dirty.add(fleet);
    if (writing.has(fleet)) return;
    const run = (async () => {
      while (dirty.has(fleet)) {
        dirty.delete(fleet);
        try {
          await write(fleet);
        } catch (err) {
          // The bucket is away: keep the change and try again; the records in memory stay right meanwhile.
          // A stopping controller does not wait for it: those instances are pinned again at their next hello.
          log.error({ err, fleet }, stopping ? 'cannot write the instance records' : 'cannot write the instance records; retrying');
          if (stopping) break;
          dirty.add(fleet);
          await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
        }
      }
    })().finally(() => {
      writing.delete(fleet);
      // a change made after the loop's last look and before this: written by a new run
      if (dirty.has(fleet) && !stopping) schedule(fleet);
    });
    writing.set(fleet, run);
  }

  return {
    async load() {
      const loadedAt = opts.now().getTime();
      for (const k of await opts.docs.list('controller/instances/')) {
        try {
          const doc = await opts.docs.get(k, FleetInstances);
          if (!doc) continue;
          // A record read at start gets a whole expiry window from now: the controller was away, not the agent.
          for (const [instanceId, r] of Object.entries(doc.instances)) add({ instanceId, fleet: doc.fleet, ...r, seenAt: loadedAt });
        } catch (err) {
          // Only a record that does not parse is skipped: one the bucket could not give (S3 away) would be
          // rewritten without its pins at the fleet's next change, so the start fails instead.
          if (!isKilnError(err, 'KILN_STATE_INVALID')) throw err;
          log.error({ err, key: k }, 'skipping instance records that do not parse: those instances are pinned again at their next hello');
        }
      }
      log.info({ instances: records.size }, 'instance records loaded');
    },
    get: (id) => records.get(id),
    of: (fleet) => [...(byFleet.get(fleet) ?? [])].map((id) => records.get(id)!),
    all: () => [...records.values()],
    count: (fleet) => byFleet.get(fleet)?.size ?? 0,
    pin(fleet, instanceId, publicKey) {
      const now = opts.now();
      const r: InstanceRecord = { instanceId, fleet, publicKey, pinnedAt: now.toISOString(), seenAt: now.getTime() };
      add(r);
      schedule(fleet);
      return r;
    },
    remove(ids) {
      for (const id of ids) {
        const r = records.get(id);
        if (!r) continue;
        records.delete(id);
        byFleet.get(r.fleet)?.delete(id);
        if (byFleet.get(r.fleet)?.size === 0) byFleet.delete(r.fleet);
        schedule(r.fleet);
      }
    },
    async flush() {
      stopping = true;
      while (writing.size) await Promise.all(writing.values());
    },
  };
}
