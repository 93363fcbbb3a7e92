import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { KilnError, isKilnError, sha256Hex, type DocStore, type Logger } from '@kiln/shared';
import { Fleet, FleetCreate, type TargetRef } from './fleet-model.js';
import type { z } from 'zod';

export interface FleetRegistry {
  /** Reads every fleet from the bucket (at start). */
  load(): Promise<void>;
  list(): Fleet[];
  /** throws KILN_FLEET_NOT_FOUND */
  get(name: string): Fleet;
  /**
   * Creates a fleet; the agent credential is returned once and kept only as a digest.
   * KILN_FLEET_EXISTS for a name in use; KILN_CHANNEL_TAKEN when another fleet of the app follows the channel.
   */
  create(input: z.infer<typeof FleetCreate>, desired: TargetRef | null): Promise<{ fleet: Fleet; agentCredential: string }>;
  /** the release and config the fleet now runs; the one before goes to its history */
  setDesired(name: string, release: TargetRef): Promise<Fleet>;
  /** Changes a fleet record (groups, image, size) and writes it. */
  update(name: string, change: (f: Fleet) => Fleet): Promise<Fleet>;
  /** Removes a fleet's record; its agent credential is refused from then on. */
  remove(name: string): Promise<void>;
  /** the fleet an agent credential belongs to; a bake's builder belongs to the pseudo-fleet `bake:APP` */
  byAgentCredential(token: string): Fleet | undefined;
  /** The agent credential instances launched into the fleet get (derived again from the controller's agent secret). */
  agentCredential(name: string): string;
  /** The credential a bake's builder connects with: good for builders of this app only. */
  builderCredential(app: string): string;
}

/** The pseudo-fleet a bake's builders report under: never listed, never deployed to. */
export const builderFleet = (app: string) => `bake:${app}`;

const key = (name: string) => `controller/fleets/${name}.json`;

/**
 * `agentSecret` lets the controller give the instances it launches their fleet's credential without
 * keeping the credential anywhere: it is derived from the secret and a per-fleet salt. Without it
 * (tests, `provider: none` only) credentials are random and shown once.
 */
export function createFleetRegistry(opts: { docs: DocStore; log: Logger; now: () => Date; agentSecret?: Buffer }): FleetRegistry {
  const fleets = new Map<string, Fleet>();
  const mac = (what: string) => createHmac('sha256', opts.agentSecret!).update(what).digest('base64url');
  const derive = (name: string, salt: string) => `kfa_${mac(`fleet:${name}:${salt}`)}`;
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
          // S3 away is not a fleet that does not parse: the start fails rather than run without it.
          if (!isKilnError(err, 'KILN_STATE_INVALID')) throw err;
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
      const sharing = [...fleets.values()].find((f) => f.app === input.app && f.channel === input.channel);
      if (sharing) {
        const free = (c: string) => ![...fleets.values()].some((f) => f.app === input.app && f.channel === c);
        const other = [input.name, `${input.name}-${input.channel}`.slice(0, 63)].find(free);
        throw new KilnError(
          'KILN_CHANNEL_TAKEN',
          `fleet ${sharing.name} already follows channel ${input.channel} of ${input.app}: two fleets on one channel move each other's instances (deploying one points the channel the other's instances boot from); pass a channel of its own${other ? `: --channel ${other}` : ' with --channel'}`,
        );
      }
      const salt = opts.agentSecret ? randomBytes(12).toString('hex') : undefined;
      const agentCredential = salt ? derive(input.name, salt) : `kfa_${randomBytes(24).toString('base64url')}`;
      const fleet: Fleet = {
        ...input,
        desired,
        history: [],
        agentCredentialSha256: sha256Hex(Buffer.from(agentCredential)),
        ...(salt ? { credentialSalt: salt } : {}),
        groups: [],
        groupSeq: 0,
        createdAt: opts.now().toISOString(),
      };
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
    async update(name, change) {
      const next = change(this.get(name));
      await opts.docs.put(key(name), next);
      remember(next);
      return next;
    },
    async remove(name) {
      const f = this.get(name);
      await opts.docs.remove(key(name));
      fleets.delete(name);
      byDigest.delete(f.agentCredentialSha256);
      log.info({ fleet: name }, 'fleet removed');
    },
    byAgentCredential(token) {
      // Looked up by digest: the token itself is never compared byte by byte.
      const name = byDigest.get(sha256Hex(Buffer.from(token)));
      if (name) return fleets.get(name);
      const builder = /^kfb_([a-z0-9][a-z0-9-]{0,62})\.([A-Za-z0-9_-]{43})$/.exec(token);
      if (!builder || !opts.agentSecret) return undefined;
      const [, app, sig] = builder as unknown as [string, string, string];
      const want = Buffer.from(mac(`builder:${app}`));
      if (!timingSafeEqual(Buffer.from(sig), want)) return undefined;
      const at = opts.now().toISOString();
      return { name: builderFleet(app), app, channel: 'bake', provider: 'none', image: null, size: 0, targetGroup: null, desired: null, history: [], agentCredentialSha256: '0'.repeat(64), groups: [], groupSeq: 0, createdAt: at };
    },
    agentCredential(name) {
      const f = this.get(name);
      if (!opts.agentSecret || !f.credentialSalt) {
        throw new KilnError('KILN_PROVIDER_FAILED', `fleet ${name} was created without a controller agent secret, so the controller cannot hand its credential to new instances; create the fleet again on a controller started by \`kiln up\``);
      }
      return derive(f.name, f.credentialSalt);
    },
    builderCredential(app) {
      if (!opts.agentSecret) throw new KilnError('KILN_PROVIDER_FAILED', 'the controller has no agent secret to give a builder a credential; start it with `kiln up`');
      return `kfb_${app}.${mac(`builder:${app}`)}`;
    },
  };
}
