import type { ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import { KilnError, type Logger } from '@kiln/shared';
import { awsCall, errorName, waitFor } from './ec2-calls.js';
import { elbSdk } from './ec2-sdk.js';
import type { WaitOptions } from '../provider.js';

/** What the target group calls need: the home region's ELBv2 client and the provider's clock and poll period. */
export interface BalancerContext {
  client: ElasticLoadBalancingV2Client;
  region: string;
  log: Logger;
  now: () => number;
  pollMs: number;
}

/** One registration of a target (a target registered on two ports has two). */
interface Registration {
  state: string;
  reason?: string;
}

/** After registering, these say the target will never turn healthy (stopped instance, group behind no load balancer): waiting would only burn the deadline. */
const HOPELESS = ['Target.InvalidState', 'Target.NotInUse'];

const elbCall = <T>(op: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> => awsCall('elbv2', op, fn, signal);

/**
 * Provider.setLive on ELBv2: registers `live` and waits until every one is healthy, then
 * deregisters `retired` and waits until connection draining has ended (the target group's
 * deregistration delay). One deadline for both. If the new targets fail to become healthy, they
 * are deregistered again before the error is thrown: a group that never became healthy takes no traffic.
 */
export async function setLiveIn(ctx: BalancerContext, targetGroup: string, live: string[], retired: string[], opts: WaitOptions): Promise<void> {
  checkArn(ctx, targetGroup);
  const deadline = ctx.now() + opts.timeoutMs;
  // an id in both lists stays: deregistering it would take a live instance out of service
  const leaving = retired.filter((id) => !live.includes(id));
  const log = ctx.log.child({ targetGroup });
  if (live.length > 0) {
    try {
      // No abort signal on a call that changes something: cut off mid-flight, it may still happen unseen.
      await elbCall('RegisterTargets', () => ctx.client.send(new (elbSdk().RegisterTargetsCommand)({ TargetGroupArn: targetGroup, Targets: live.map((Id) => ({ Id })) })));
      log.info({ targets: live }, 'registered targets, waiting until healthy');
      await waitTargets(ctx, targetGroup, live, 'healthy', deadline, opts);
    } catch (err) {
      // also after a RegisterTargets that failed: one cut off in flight may have taken effect
      await deregister(ctx, targetGroup, live).catch((cleanupErr: unknown) =>
        log.error({ err: cleanupErr, targets: live }, 'could not deregister the targets that did not become healthy'),
      );
      throw err;
    }
    log.info({ targets: live }, 'targets healthy');
  }
  if (leaving.length > 0) {
    await deregister(ctx, targetGroup, leaving);
    log.info({ targets: leaving }, 'deregistered targets, waiting for connection draining');
    await waitTargets(ctx, targetGroup, leaving, 'drained', deadline, opts);
    log.info({ targets: leaving }, 'targets drained');
  }
}

/** Instance ids are registered, so the group must be an instance target group of this region; refused before any call otherwise. */
function checkArn(ctx: BalancerContext, arn: string): void {
  const [scheme, , service, region, , resource] = arn.split(':');
  if (scheme !== 'arn' || service !== 'elasticloadbalancing' || !resource?.startsWith('targetgroup/')) {
    throw new KilnError('KILN_PROVIDER_FAILED', `target group ${arn} is not an ELBv2 target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)`);
  }
  if (region !== ctx.region) throw new KilnError('KILN_PROVIDER_FAILED', `target group ${arn} is in ${region}, the fleet's instances in ${ctx.region}`);
}

/** ELBv2 refuses a whole batch for one instance that no longer exists; such an instance serves nothing, so then each goes alone and it is skipped. */
async function deregister(ctx: BalancerContext, targetGroup: string, ids: string[]): Promise<void> {
  const send = (batch: string[]) =>
    elbCall('DeregisterTargets', () => ctx.client.send(new (elbSdk().DeregisterTargetsCommand)({ TargetGroupArn: targetGroup, Targets: batch.map((Id) => ({ Id })) }))).then(
      () => true,
      (err: unknown) => {
        if (err instanceof KilnError && errorName(err.cause) === 'InvalidTargetException') return false;
        throw err;
      },
    );
  if (!(await send(ids)) && ids.length > 1) await Promise.all(ids.map((id) => send([id])));
}

/** Every registration in the group by target id. Not filtered by id: a target absent from the answer is simply not registered. */
async function describeTargets(ctx: BalancerContext, targetGroup: string, signal: AbortSignal): Promise<Map<string, Registration[]>> {
  const out = await elbCall('DescribeTargetHealth', () => ctx.client.send(new (elbSdk().DescribeTargetHealthCommand)({ TargetGroupArn: targetGroup }), { abortSignal: signal }), signal);
  const seen = new Map<string, Registration[]>();
  for (const d of out.TargetHealthDescriptions ?? []) {
    const id = d.Target?.Id;
    if (!id) continue;
    const reason = d.TargetHealth?.Reason;
    seen.set(id, [...(seen.get(id) ?? []), { state: d.TargetHealth?.State ?? 'unknown', ...(reason ? { reason } : {}) }]);
  }
  return seen;
}

function waitTargets(ctx: BalancerContext, targetGroup: string, ids: string[], goal: 'healthy' | 'drained', deadline: number, opts: WaitOptions): Promise<void> {
  const reached = (regs: Registration[]) => (goal === 'healthy' ? regs.length > 0 && regs.every((r) => r.state === 'healthy') : regs.every((r) => r.state === 'unused'));
  const show = (id: string, regs: Registration[]) => `${id} (${regs.length ? regs.map((r) => (r.reason ? `${r.state}: ${r.reason}` : r.state)).join(', ') : 'not registered'})`;
  return waitFor({
    ctx,
    deadline,
    timeoutMs: opts.timeoutMs,
    what: `targets ${ids.join(', ')} to be ${goal} in ${targetGroup}`,
    ...(opts.signal ? { signal: opts.signal } : {}),
    check: async (signal) => {
      const seen = await describeTargets(ctx, targetGroup, signal);
      const stuck = ids.filter((id) => !reached(seen.get(id) ?? []));
      if (stuck.length === 0) return { done: true, value: undefined };
      const hopeless = goal === 'healthy' ? stuck.filter((id) => seen.get(id)?.some((r) => r.state === 'unused' && HOPELESS.includes(r.reason ?? ''))) : [];
      if (hopeless.length > 0) {
        throw new KilnError('KILN_PROVIDER_FAILED', `elbv2 targets can never become healthy in ${targetGroup}: ${hopeless.map((id) => show(id, seen.get(id)!)).join(', ')}`);
      }
      return { done: false, stuck: stuck.map((id) => show(id, seen.get(id) ?? [])).join(', ') };
    },
  });
}
