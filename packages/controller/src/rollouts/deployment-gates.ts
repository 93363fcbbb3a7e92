import { KilnError, isKilnError, releaseProcesses, type Manifest } from '@kiln/shared';
import type { AlarmWatch, Balancer } from '../balancers/balancer.js';
import type { Deployment, Fleet } from '../fleets/fleet-model.js';

export type GateName = 'canary' | 'canaryWaitMs' | 'soakMs' | 'maxErrorRate' | 'alarms';
export type Gates = Pick<Deployment, GateName>;

/**
 * Gates that cannot work on this fleet are refused before anything moves: an error rate without a
 * balancer that counts per target, a canary as big as what it would deploy to (`size`: the connected
 * instances of a hotfix, the fleet's size for a group).
 */
export function checkGates(fleet: Fleet, g: Gates, balancer: Balancer | undefined, size: { n: number; what: string }): void {
  if (g.maxErrorRate !== null && (!balancer || balancer.kind === 'elbv2')) {
    throw new KilnError(
      'KILN_REQUEST_INVALID',
      `maxErrorRate reads the balancer's 5xx counters per target: fleet ${fleet.name} has ${balancer ? 'an ELBv2 target group, which keeps none (give CloudWatch alarms instead: --alarm NAME)' : 'no load balancer (a local fleet gets one when `kiln up` runs HAProxy)'}`,
    );
  }
  if (g.canary !== null && g.canary >= size.n) {
    throw new KilnError('KILN_REQUEST_INVALID', `a canary of ${g.canary} is not smaller than the ${size.n} instance(s) ${size.what} fleet ${fleet.name}: nothing would be left to promote to`);
  }
}

/** A deployment's wait per instance when the operator gives none. */
const DEFAULT_HEALTH_TIMEOUT_MS = 30_000;

/**
 * How long the controller waits for an instance's result: the operator's --health-timeout, which
 * must not be shorter than the release's own health checks (the instance would still be checking
 * when the controller gave up on it, and report "did not answer"); without one, 30 s or what the
 * release can take (its health checks and its beforeStart and validate hooks), whichever is longer.
 */
export function deploymentHealthTimeout(manifest: Manifest, given: number | undefined): number {
  const health = Object.values(releaseProcesses(manifest)).reduce((n, p) => n + (p.health.type === 'none' ? 0 : p.health.timeoutMs), 0);
  const hooks = (manifest.hooks?.beforeStart?.timeoutMs ?? 0) + (manifest.hooks?.validate?.timeoutMs ?? 0);
  if (given === undefined) return Math.max(DEFAULT_HEALTH_TIMEOUT_MS, health + hooks + 5_000);
  if (given < health) {
    throw new KilnError(
      'KILN_REQUEST_INVALID',
      `--health-timeout ${given / 1000} s is shorter than ${manifest.app} ${manifest.version}'s own health check (${health / 1000} s): the controller would give up while the instance still checks; give --health-timeout ${Math.ceil((health + hooks + 5_000) / 1000)}s or more, or leave it out`,
    );
  }
  return given;
}

/**
 * The alarms a deployment watches, each checked to exist first: a typo fails the deployment before
 * it starts (KILN_REQUEST_INVALID: the request's fault, not the controller's).
 */
export async function alarmsOf(names: string[], watch: ((names: string[]) => Promise<AlarmWatch>) | undefined): Promise<AlarmWatch | undefined> {
  if (names.length === 0) return undefined;
  if (!watch) throw new KilnError('KILN_REQUEST_INVALID', `alarms (${names.join(', ')}) are CloudWatch alarms: this controller has no AWS region to read them in (the ec2 provider's)`);
  try {
    return await watch(names);
  } catch (err) {
    if (isKilnError(err) && Array.isArray(err.details?.missing)) throw new KilnError('KILN_REQUEST_INVALID', `alarms: ${err.message}`, { cause: err });
    throw err;
  }
}

/**
 * The alarms of a rollout a restarted controller resumes: when they cannot be watched any more, the
 * gate is not dropped: every look at them fails, so the next soak fails and the batch rolls back.
 */
export async function resumedAlarms(names: string[], watch: ((names: string[]) => Promise<AlarmWatch>) | undefined): Promise<AlarmWatch | undefined> {
  try {
    return await alarmsOf(names, watch);
  } catch (err) {
    return { firing: () => Promise.reject(err) };
  }
}
