import { KilnError, type Logger } from '@kiln/shared';
import type { Balancer, Target, TargetHealth, TargetStats } from '../balancers/balancer.js';
import type { Fleet } from '../fleets/fleet-model.js';
import { TAG, type Provider } from '../providers/provider.js';

/**
 * A fleet's instances in its balancer, by instance id: the rollouts' view of traffic. Addresses
 * come from the provider (HAProxy needs them; ELBv2 registers the ids).
 */
export interface FleetTraffic {
  readonly kind: Balancer['kind'];
  /** the frontend URL or target group a deployment record names */
  readonly endpoint: string;
  /** out of service with drain: no new requests, in-flight ones end (or the drain time passes) */
  drain(ids: string[]): Promise<void>;
  /** (back) in service; resolves when the balancer reports each healthy */
  admit(ids: string[]): Promise<void>;
  /**
   * Drains instances whose replacements already serve (admitted before: never a moment with neither
   * serving). A drain that fails is logged, not thrown: the retired ones are stopped next either
   * way (gracefully: their requests in flight get the app's stop time).
   */
  retire(ids: string[]): Promise<void>;
  health(ids: string[]): Promise<Map<string, TargetHealth>>;
  stats(ids: string[]): Promise<Map<string, TargetStats> | null>;
}

export interface FleetTrafficOptions {
  balancer: Balancer;
  fleet: string;
  /** where the fleet's instances answer (none: the balancer needs no addresses) */
  provider?: Provider;
  /** how long targets get to become healthy in the balancer */
  healthyMs: number;
  /** how long in-flight requests get to end (HAProxy; ELBv2 has its deregistration delay) */
  drainMs: number;
  log: Logger;
}

export function fleetTraffic(o: FleetTrafficOptions): FleetTraffic {
  const log = o.log.child({ module: 'traffic', fleet: o.fleet, balancer: o.balancer.endpoint });

  async function targets(ids: string[]): Promise<Target[]> {
    if (ids.length === 0 || o.balancer.kind === 'elbv2' || !o.provider) return ids.map((id) => ({ id }));
    const known = new Map((await o.provider.describeInstances({ [TAG.fleet]: o.fleet })).map((i) => [i.id, i.address]));
    return ids.map((id) => {
      const address = known.get(id);
      if (!address) throw new KilnError('KILN_BALANCER_FAILED', `instance ${id} of fleet ${o.fleet} has no address the ${o.balancer.kind} balancer could send requests to (the ${o.provider!.name} provider does not know it)`);
      return { id, address };
    });
  }

  // ELBv2 drains for its target group's deregistration delay (AWS allows up to an hour), not kiln's drain time.
  const drainTimeoutMs = (o.balancer.kind === 'elbv2' ? 3_600_000 : o.drainMs) + 30_000;
  const drain = async (ids: string[]) => {
    if (ids.length === 0) return;
    const t = Date.now();
    // By id: an instance that is gone (no address any more) still leaves the balancer.
    await o.balancer.drain(ids.map((id) => ({ id })), { timeoutMs: drainTimeoutMs, drainMs: o.drainMs });
    log.info({ targets: ids, ms: Date.now() - t }, 'drained');
  };
  // An ELBv2 health check needs its healthy threshold of passes at its interval (5 × 30 s by default): minutes, not seconds.
  const admitTimeoutMs = o.balancer.kind === 'elbv2' ? Math.max(o.healthyMs, 600_000) : o.healthyMs;
  const admit = async (ids: string[]) => {
    if (ids.length === 0) return;
    const t = Date.now();
    await o.balancer.register(await targets(ids), { timeoutMs: admitTimeoutMs });
    log.info({ targets: ids, ms: Date.now() - t }, 'in service and healthy');
  };
  return {
    kind: o.balancer.kind,
    endpoint: o.balancer.endpoint,
    drain,
    admit,
    async retire(ids) {
      await drain(ids).catch((err: unknown) => log.warn({ err, retired: ids }, 'the retired instances did not drain cleanly: they are stopped anyway'));
    },
    health: (ids) => o.balancer.health(ids),
    stats: (ids) => o.balancer.stats(ids),
  };
}

/**
 * After a start of the controller or of the balancer, each fleet's balancer is made to hold what it
 * should: every running instance of the live group, except those a rollout in flight has taken out
 * (`busy`: it puts them back itself); servers of instances that are gone or retired are drained out
 * (a freed port could be another instance's by now). One that does not get healthy in time stays
 * out and is logged: a deployment or heal deals with it.
 */
export async function restoreTraffic(o: {
  fleets: Fleet[];
  balancerFor: (fleet: Fleet) => Balancer | undefined;
  provider?: Provider;
  busy: Set<string>;
  log: Logger;
  healthyMs: number;
}): Promise<void> {
  await Promise.all(
    o.fleets.map(async (fleet) => {
      try {
        const balancer = o.balancerFor(fleet);
        if (!balancer || !o.provider) return;
        const live = new Set(fleet.groups.filter((g) => g.state === 'live').flatMap((g) => g.instances));
        const wanted = (await o.provider.describeInstances({ [TAG.fleet]: fleet.name })).filter((i) => live.has(i.id) && i.state === 'running' && !o.busy.has(i.id)).map((i) => i.id);
        const traffic = fleetTraffic({ balancer, fleet: fleet.name, provider: o.provider, healthyMs: o.healthyMs, drainMs: 0, log: o.log });
        const stale = ((await balancer.registered?.()) ?? []).filter((id) => !wanted.includes(id) && !o.busy.has(id));
        await balancer.drain(stale.map((id) => ({ id })), { timeoutMs: 30_000, drainMs: 0 });
        await traffic.admit(wanted);
      } catch (err) {
        o.log.warn({ err, fleet: fleet.name }, 'cannot put the live group in its balancer: it serves once a deployment or heal admits it');
      }
    }),
  );
}
