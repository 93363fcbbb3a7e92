import type { Filter, Instance } from '@aws-sdk/client-ec2';
import { KilnError } from '@kiln/shared';
import { ec2Call, ec2CallTolerating, fromEc2Tags, tagFilters, waitFor, type Ec2Context } from './ec2-calls.js';
import { ec2Sdk } from './ec2-sdk.js';
import type { InstanceInfo, InstanceState, Tags, WaitOptions } from '../provider.js';

/** Every state but terminated: what "instances carrying these tags" means to a fleet. */
const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped'];
const NOT_FOUND = ['InvalidInstanceID.NotFound'];

export function toInstanceInfo(i: Instance): InstanceInfo {
  return {
    id: i.InstanceId ?? '',
    imageId: i.ImageId ?? '',
    state: instanceState(i.State?.Name),
    tags: fromEc2Tags(i.Tags),
    ...(i.PrivateIpAddress ? { address: i.PrivateIpAddress } : {}),
    launchedAt: (i.LaunchTime ?? new Date(0)).toISOString(),
  };
}

function instanceState(name: string | undefined): InstanceState {
  switch (name) {
    case 'running':
    case 'stopping':
    case 'stopped':
    case 'terminated':
      return name;
    // on its way out: no caller may count on it any more
    case 'shutting-down':
      return 'terminated';
    default:
      return 'pending';
  }
}

/**
 * DescribeInstances, all pages. Ids go in as a filter, not InstanceIds: an id EC2 does not show
 * yet (just launched, eventual consistency) or any more is then simply absent instead of failing
 * the whole call.
 */
export async function describeInstancesIn(ctx: Ec2Context, query: { ids?: string[]; tags?: Tags; live?: boolean }, signal?: AbortSignal): Promise<InstanceInfo[]> {
  const filters: Filter[] = [...tagFilters(query.tags ?? {})];
  if (query.ids) filters.push({ Name: 'instance-id', Values: query.ids });
  if (query.live) filters.push({ Name: 'instance-state-name', Values: LIVE_STATES });
  const out: InstanceInfo[] = [];
  let token: string | undefined;
  do {
    const page = await ec2Call(
      'DescribeInstances',
      () => ctx.client.send(new (ec2Sdk().DescribeInstancesCommand)({ Filters: filters, NextToken: token }), signal ? { abortSignal: signal } : {}),
      signal,
    );
    for (const r of page.Reservations ?? []) for (const i of r.Instances ?? []) out.push(toInstanceInfo(i));
    token = page.NextToken;
  } while (token);
  return out;
}

/** Waits until every id is in `target`; a terminated one fails at once, the deadline gives KILN_PROVIDER_TIMEOUT. */
export function waitInstances(ctx: Ec2Context, ids: string[], target: 'running' | 'stopped', deadline: number, opts: WaitOptions): Promise<InstanceInfo[]> {
  return waitFor({
    ctx,
    deadline,
    timeoutMs: opts.timeoutMs,
    what: `instances ${ids.join(', ')} to be ${target}`,
    ...(opts.signal ? { signal: opts.signal } : {}),
    check: async (signal) => {
      const seen = new Map((await describeInstancesIn(ctx, { ids }, signal)).map((i) => [i.id, i]));
      const dead = ids.filter((id) => seen.get(id)?.state === 'terminated');
      if (dead.length > 0) throw new KilnError('KILN_PROVIDER_FAILED', `ec2 instances ${dead.join(', ')} terminated while waiting for them to be ${target}`);
      if (ids.every((id) => seen.get(id)?.state === target)) return { done: true, value: ids.map((id) => seen.get(id)!) };
      const stuck = ids.filter((id) => seen.get(id)?.state !== target).map((id) => `${id} (${seen.get(id)?.state ?? 'not found'})`);
      return { done: false, stuck: stuck.join(', ') };
    },
  });
}

export async function stopInstances(ctx: Ec2Context, ids: string[], deadline: number, opts: WaitOptions): Promise<void> {
  if (ids.length === 0) return;
  // No abort signal on a call that changes something: cut off mid-flight, it may still happen unseen.
  await ec2Call('StopInstances', () => ctx.client.send(new (ec2Sdk().StopInstancesCommand)({ InstanceIds: ids })));
  await waitInstances(ctx, ids, 'stopped', deadline, opts);
}

export async function startInstances(ctx: Ec2Context, ids: string[], deadline: number, opts: WaitOptions): Promise<void> {
  if (ids.length === 0) return;
  await ec2Call('StartInstances', () => ctx.client.send(new (ec2Sdk().StartInstancesCommand)({ InstanceIds: ids })));
  await waitInstances(ctx, ids, 'running', deadline, opts);
}

/** CreateImage wants a stopped instance: stops it (or waits for a stop under way). */
export async function ensureStopped(ctx: Ec2Context, id: string, deadline: number, opts: WaitOptions): Promise<void> {
  const [found] = await describeInstancesIn(ctx, { ids: [id] }, opts.signal);
  if (!found) throw new KilnError('KILN_INSTANCE_NOT_FOUND', `ec2 instance ${id} does not exist in ${ctx.region}`);
  if (found.state === 'stopped') return;
  if (found.state === 'terminated') throw new KilnError('KILN_PROVIDER_FAILED', `ec2 instance ${id} is terminated: no image can be made from it`);
  ctx.log.info({ instanceId: id, state: found.state }, 'stopping the instance before creating its image');
  if (found.state === 'stopping') await waitInstances(ctx, [id], 'stopped', deadline, opts);
  else await stopInstances(ctx, [id], deadline, opts);
}

/** Unknown ids are no error. EC2 refuses a whole batch for one unknown id, so then each goes alone. */
export async function terminateInstances(ctx: Ec2Context, ids: string[]): Promise<void> {
  if (ids.length === 0) return;
  const terminate = (batch: string[]) =>
    ec2CallTolerating('TerminateInstances', NOT_FOUND, () => ctx.client.send(new (ec2Sdk().TerminateInstancesCommand)({ InstanceIds: batch })));
  const done = await terminate(ids);
  if (done === undefined && ids.length > 1) await Promise.all(ids.map((id) => terminate([id])));
  ctx.log.info({ instanceIds: ids }, 'terminated instances');
}
