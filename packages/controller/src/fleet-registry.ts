import { randomBytes } from 'node:crypto';
import { KilnError, sha256Hex, type DocStore, type Logger } from '@kiln/shared';
import { Fleet, FleetCreate, type ReleaseRef } from './fleet-model.js';
import type { z } from 'zod';

export interface FleetRegistry {
  /** Reads every fleet from the bucket (at start). */
  load(): Promise<void>;
  list(): Fleet[];
  /** throws KILN_FLEET_NOT_FOUND */
  get(name: string): Fleet;
  /** Creates a fleet; the agent credential is returned once and kept only as a digest. */
  create(input: z.infer<typeof FleetCreate>, desired: ReleaseRef | null): Promise<{ fleet: Fleet; agentCredential: string }>;
  setDesired(name: string, release: ReleaseRef): Promise<Fleet>;
  /** the fleet an agent credential belongs to */
  byAgentCredential(token: string): Fleet | undefined;
}

const key = (name: string) => `controller/fleets/${name}.json`;

export function createFleetRegistry(opts: { docs: DocStore; log: Logger; now: () => Date }): FleetRegistry {
  const fleets = new Map<string, Fleet>();
  const byDigest = new Map<string, string>();
  const log = opts.log.child({ module: 'fleets' });

  function remember(f: Fleet): void {
    fleets.set(f.name, f);
    byDigest.set(f.agentCredentialSha256, f.name);
  }

  return {
    async load() {
      for (const k of await opts.docs.list('controller/fleets/')) {
        try {
          const f = await opts.docs.get(k, Fleet);
          if (f) remember(f);
        } catch (err) {
          log.error({ err, key: k }, 'skipping a fleet record that does not parse');
        }
      }
      log.info({ fleets: fleets.size }, 'fleets loaded');
    },
    list: () => [...fleets.values()].sort((a, b) => a.name.localeCompare(b.name)),
    get(name) {
      const f = fleets.get(name);
      if (!f) throw new KilnError('KILN_FLEET_NOT_FOUND', `no fleet named ${JSON.stringify(name)}; \`kiln fleet list\` shows them`);
      return f;
    },
    async create(input, desired) {
      if (fleets.has(input.name)) throw new KilnError('KILN_FLEET_EXISTS', `a fleet named ${input.name} already exists`);
      const agentCredential = `kfa_${randomBytes(24).toString('base64url')}`;
      const fleet: Fleet = { ...input, desired, history: [], agentCredentialSha256: sha256Hex(Buffer.from(agentCredential)), createdAt: opts.now().toISOString() };
      await opts.docs.put(key(fleet.name), fleet);
      remember(fleet);
      log.info({ fleet: fleet.name, app: fleet.app, channel: fleet.channel }, 'fleet created');
      return { fleet, agentCredential };
    },
    async setDesired(name, release) {
      const f = this.get(name);
      const history = f.desired ? [...f.history, { ...f.desired, at: opts.now().toISOString() }].slice(-50) : f.history;
      const next: Fleet = { ...f, desired: release, history };
      await opts.docs.put(key(name), next);
      remember(next);
      return next;
    },
    byAgentCredential(token) {
      // Looked up by digest: the token itself is never compared byte by byte.
      const name = byDigest.get(sha256Hex(Buffer.from(token)));
      return name ? fleets.get(name) : undefined;
    },
  };
}
