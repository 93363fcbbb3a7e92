/**
 * A load balancer in front of one fleet: HAProxy's backend locally, an ELBv2 target group on AWS.
 * Rollouts use only this interface, so a hotfix drains the same way on both and a group swap
 * registers the new group healthy before the old one drains. Every wait has a deadline.
 */

/** One instance as the balancer sees it: its id (the server name or ELBv2 target id) and where its app answers. */
export interface Target {
  id: string;
  /** `http://HOST:PORT` (HAProxy sends requests there); ELBv2 registers the instance id and ignores it */
  address?: string;
}

/**
 * healthy: takes requests; unhealthy: registered but failing the balancer's checks; initial: being
 * checked for the first time; draining: no new requests, in-flight ones finishing; unused: not registered.
 */
export type TargetState = 'healthy' | 'unhealthy' | 'initial' | 'draining' | 'unused';

export interface TargetHealth {
  state: TargetState;
  /** the balancer's own words (HAProxy's status column, ELBv2's reason code) */
  reason?: string;
}

/** Counters since the balancer started (compare two readings for a window). */
export interface TargetStats {
  /** responses sent back from this target (any status) */
  requests: number;
  /** of those, 5xx */
  errors5xx: number;
  /** requests in flight now */
  inFlight: number;
}

export interface BalancerWait {
  /** give up after this long with KILN_BALANCER_TIMEOUT */
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface Balancer {
  readonly kind: 'haproxy' | 'elbv2';
  /** what `kiln fleet show` prints: the frontend URL (HAProxy), the target group ARN (ELBv2) */
  readonly endpoint: string;
  /**
   * Registers the targets (or puts registered ones back in service) and resolves once the
   * balancer reports every one healthy. Targets that do not get healthy in time are taken out
   * again before KILN_BALANCER_TIMEOUT is thrown: a target that never became healthy takes no traffic.
   */
  register(targets: Target[], wait: BalancerWait): Promise<void>;
  /**
   * Deregisters with drain: no new requests from now on; resolves when the requests in flight have
   * ended, or `drainMs` has passed (then the rest are cut), and the targets are out. Unknown ids are no error.
   */
  drain(targets: Target[], wait: BalancerWait & { drainMs?: number }): Promise<void>;
  /** how the balancer sees each id now (an id it does not know is `unused`) */
  health(ids: string[]): Promise<Map<string, TargetHealth>>;
  /** per-target counters, when the balancer keeps them (ELBv2 does not: null; use CloudWatch alarms there) */
  stats(ids: string[]): Promise<Map<string, TargetStats> | null>;
  /** the ids registered now (HAProxy: the backend's servers); absent where the balancer cannot list them cheaply */
  registered?(): Promise<string[]>;
}

/** CloudWatch alarms watched during a soak (ELBv2 fleets keep no per-target counters of their own). */
export interface AlarmWatch {
  /** the watched alarms in state ALARM now, in the order given (OK and INSUFFICIENT_DATA are not firing) */
  firing(): Promise<string[]>;
}

/** The local balancer: one HAProxy, a frontend and backend per fleet. */
export interface LocalBalancer {
  /** the fleet's backend */
  balancer(fleet: string): Balancer;
  /** the fleets that have a frontend (a new one gets a port of its own, kept across restarts) */
  setFleets(names: string[]): Promise<void>;
}

/** Where a controller finds its fleets' balancers (docs/balancers.md). */
export interface BalancerSource {
  /** HAProxy, for fleets on the process and nspawn providers */
  local?: LocalBalancer;
  /** ELBv2, for fleets with a target group */
  targetGroup?: (arn: string) => Balancer;
  /** CloudWatch alarms (`--alarm NAME`); each name is checked to exist before a deployment starts */
  alarms?: (names: string[]) => Promise<AlarmWatch>;
}
