import type { ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import { isKilnError, KilnError, type Logger, pollUntil } from '@kiln/shared';
import { awsCall, errorName } from '../providers/ec2/ec2-calls.js';
import { elbSdk } from '../providers/ec2/ec2-sdk.js';
import type { Balancer, BalancerWait, Target, TargetHealth, TargetState } from './balancer.js';

export interface Elbv2BalancerOptions {
  client: ElasticLoadBalancingV2Client;
  /** the region of the fleet's instances: the target group must be there */
  region: string;
  /** the ARN of an instance target group (the instance ids are registered, on the group's port) */
  targetGroup: string;
  log: Logger;
  /** the clock every deadline is measured on; Date.now when not given */
  now?: () => number;
  /** the pause between two DescribeTargetHealth calls; 5 s when not given */
  pollMs?: number;
}

/** One registration of a target as ELBv2 reports it (a target registered on two ports has two). */
interface Registration {
  state: string;
  reason?: string;
}

/** After registering, these say the target will never turn healthy (stopped instance, group behind no load balancer): waiting would only burn the deadline. */
const HOPELESS = ['Target.InvalidState', 'Target.NotInUse'];

/** ELBv2's target states on kiln's; `unhealthy.draining` is leaving, `unavailable` (health checks off) takes no part in a health gate. */
const STATES: Record<string, TargetState> = {
  healthy: 'healthy',
  unhealthy: 'unhealthy',
  initial: 'initial',
  draining: 'draining',
  'unhealthy.draining': 'draining',
  unused: 'unused',
  unavailable: 'unhealthy',
};

/**
 * The Balancer of one ELBv2 instance target group. Every call that changes the group goes out
 * without an abort signal: cut off mid-flight, it may still take effect unseen, and the caller
 * would believe the opposite. Only the DescribeTargetHealth polls are cut at the deadline.
 *
 * `drain` ignores `drainMs`: ELBv2 ends connection draining after the target group's own
 * deregistration delay (300 s unless set), which kiln does not change; a drain's `timeoutMs` must
 * be longer than that delay, or it ends in KILN_BALANCER_TIMEOUT with the targets still draining.
 */
export function createElbv2Balancer(o: Elbv2BalancerOptions): Balancer {
  const { client, targetGroup } = o;
  checkArn(targetGroup, o.region);
  const now = o.now ?? Date.now;
  const pollMs = o.pollMs ?? 5_000;
  const log = o.log.child({ module: 'elbv2-balancer', targetGroup });
  const targets = (ids: string[]) => ids.map((Id) => ({ Id }));

  /** Every registration in the group by target id. Not filtered by id: a target absent from the answer is simply not registered. */
  async function describe(signal?: AbortSignal): Promise<Map<string, Registration[]>> {
    const command = new (elbSdk().DescribeTargetHealthCommand)({ TargetGroupArn: targetGroup });
    const out = await elbCall('DescribeTargetHealth', () => client.send(command, signal ? { abortSignal: signal } : {}), signal);
    const seen = new Map<string, Registration[]>();
    for (const d of out.TargetHealthDescriptions ?? []) {
      const id = d.Target?.Id;
      if (!id) continue;
      const reason = d.TargetHealth?.Reason;
      seen.set(id, [...(seen.get(id) ?? []), { state: d.TargetHealth?.State ?? 'unknown', ...(reason ? { reason } : {}) }]);
    }
    return seen;
  }

  /** ELBv2 refuses a whole batch for one instance that no longer exists; such an instance serves nothing, so then each goes alone and it is skipped. */
  async function deregister(ids: string[]): Promise<void> {
    const send = (batch: string[]) =>
      elbCall('DeregisterTargets', () => client.send(new (elbSdk().DeregisterTargetsCommand)({ TargetGroupArn: targetGroup, Targets: targets(batch) }))).then(
        () => true,
        (err: unknown) => {
          if (isKilnError(err) && errorName(err.cause) === 'InvalidTargetException') {
            if (batch.length === 1) log.info({ target: batch[0] }, 'target is no instance any more (InvalidTarget); skipped');
            return false;
          }
          throw err;
        },
      );
    if (!(await send(ids)) && ids.length > 1) await Promise.all(ids.map((id) => send([id])));
  }

  /** Polls until every id has reached `goal`; one deadline on `now`, so a poll never starts after it. */
  async function waitTargets(goal: 'healthy' | 'drained', ids: string[], deadline: number, wait: BalancerWait): Promise<void> {
    const reached = (regs: Registration[]) => (goal === 'healthy' ? regs.length > 0 && regs.every((r) => r.state === 'healthy') : regs.every((r) => r.state === 'unused'));
    let seen = new Map<string, Registration[]>();
    let looked = false;
    const stuckIds = () => ids.filter((id) => !reached(seen.get(id) ?? []));
    const timeout = () => {
      const stuck = stuckIds();
      const states = looked ? stuck.map((id) => show(id, seen.get(id) ?? [])).join(', ') : 'not seen yet';
      return new KilnError('KILN_BALANCER_TIMEOUT', `elbv2: timed out after ${wait.timeoutMs} ms waiting for targets ${ids.join(', ')} to be ${goal} in ${targetGroup}: ${states}`, {
        details: { targetGroup, goal, stuck: Object.fromEntries(stuck.map((id) => [id, seen.get(id) ?? []])) },
      });
    };
    await pollUntil({
      // the deadline is kept here, on the injected clock: pollUntil's own would run on Date.now
      timeoutMs: Infinity,
      intervalMs: pollMs,
      ...(wait.signal ? { signal: wait.signal } : {}),
      check: async () => {
        const left = deadline - now();
        if (left <= 0) throw timeout();
        const deadlineSignal = AbortSignal.timeout(left);
        try {
          seen = await describe(wait.signal ? AbortSignal.any([wait.signal, deadlineSignal]) : deadlineSignal);
        } catch (err) {
          wait.signal?.throwIfAborted();
          if (deadlineSignal.aborted) throw timeout();
          throw err;
        }
        looked = true;
        const stuck = stuckIds();
        if (stuck.length === 0) return true;
        const hopeless = goal === 'healthy' ? stuck.filter((id) => seen.get(id)?.some((r) => r.state === 'unused' && HOPELESS.includes(r.reason ?? ''))) : [];
        if (hopeless.length > 0) {
          throw new KilnError('KILN_BALANCER_FAILED', `elbv2 targets can never become healthy in ${targetGroup}: ${hopeless.map((id) => show(id, seen.get(id)!)).join(', ')}`, {
            details: { targetGroup, hopeless: Object.fromEntries(hopeless.map((id) => [id, seen.get(id)])) },
          });
        }
        if (now() >= deadline) throw timeout();
        return false;
      },
    });
  }

  return {
    kind: 'elbv2',
    endpoint: targetGroup,

    async register(list: Target[], wait: BalancerWait): Promise<void> {
      const ids = unique(list);
      if (ids.length === 0) return;
      wait.signal?.throwIfAborted();
      const deadline = now() + wait.timeoutMs;
      try {
        await elbCall('RegisterTargets', () => client.send(new (elbSdk().RegisterTargetsCommand)({ TargetGroupArn: targetGroup, Targets: targets(ids) })));
        log.info({ targets: ids }, 'registered targets, waiting until healthy');
        await waitTargets('healthy', ids, deadline, wait);
      } catch (err) {
        // All of them, also after a RegisterTargets that failed: one cut off in flight may have taken
        // effect, and a register either ends with every target healthy or with none taking traffic.
        await deregister(ids).catch((cleanupErr: unknown) => log.error({ err: cleanupErr, targets: ids }, 'could not deregister the targets that did not become healthy'));
        throw err;
      }
      log.info({ targets: ids }, 'targets healthy');
    },

    async drain(list: Target[], wait: BalancerWait & { drainMs?: number }): Promise<void> {
      const ids = unique(list);
      if (ids.length === 0) return;
      wait.signal?.throwIfAborted();
      const deadline = now() + wait.timeoutMs;
      await deregister(ids);
      log.info({ targets: ids }, 'deregistered targets, waiting for connection draining (the target group\'s deregistration delay)');
      await waitTargets('drained', ids, deadline, wait);
      log.info({ targets: ids }, 'targets drained');
    },

    async health(ids: string[]): Promise<Map<string, TargetHealth>> {
      const seen = await describe();
      return new Map(ids.map((id) => [id, summarize(seen.get(id) ?? [])]));
    },

    stats(): Promise<null> {
      // ELBv2 counts requests per load balancer and target group in CloudWatch, never per target
      return Promise.resolve(null);
    },
  };
}

/** Instance ids are registered, so the group must be a target group of the instances' region; refused before any call otherwise. */
function checkArn(arn: string, region: string): void {
  const [scheme, , service, arnRegion, , resource] = arn.split(':');
  if (scheme !== 'arn' || service !== 'elasticloadbalancing' || !resource?.startsWith('targetgroup/')) {
    throw new KilnError('KILN_BALANCER_FAILED', `target group ${arn} is not an ELBv2 target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)`);
  }
  if (arnRegion !== region) throw new KilnError('KILN_BALANCER_FAILED', `target group ${arn} is in ${arnRegion}, the fleet's instances in ${region}`);
}

/** One SDK call; a failure is KILN_BALANCER_FAILED "elbv2 <Operation> failed: <AWS error name>: …" with the SDK error as cause. */
function elbCall<T>(op: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  return awsCall('elbv2', op, fn, signal).catch((err: unknown) => {
    // awsCall words the message; the code is the balancer's, not the provider's
    throw isKilnError(err, 'KILN_PROVIDER_FAILED') ? new KilnError('KILN_BALANCER_FAILED', err.message, { cause: err.cause }) : err;
  });
}

/**
 * One TargetHealth for all registrations of an id: healthy or unused only when every one is;
 * otherwise the first of draining, unhealthy, initial found (a mix of healthy and unused ports is
 * unhealthy: registered, not serving everywhere). ELBv2's reason codes are kept, joined.
 */
function summarize(regs: Registration[]): TargetHealth {
  if (regs.length === 0) return { state: 'unused' };
  const states = regs.map((r) => STATES[r.state] ?? 'unhealthy');
  const state = states.every((s) => s === states[0]) ? states[0]! : ((['draining', 'unhealthy', 'initial'] as const).find((s) => states.includes(s)) ?? 'unhealthy');
  const reasons = [...new Set(regs.filter((_, i) => states[i] === state || !states.includes(state)).flatMap((r) => (r.reason ? [r.reason] : [])))];
  return reasons.length > 0 ? { state, reason: reasons.join(', ') } : { state };
}

function show(id: string, regs: Registration[]): string {
  return `${id} (${regs.length > 0 ? regs.map((r) => (r.reason ? `${r.state}: ${r.reason}` : r.state)).join(', ') : 'not registered'})`;
}

function unique(list: Target[]): string[] {
  return [...new Set(list.map((t) => t.id))];
}
