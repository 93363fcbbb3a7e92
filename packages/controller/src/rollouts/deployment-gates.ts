import { KilnError, isKilnError } from '@kiln/shared';
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
