import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { CloudWatchClient, CloudWatchServiceException, DescribeAlarmsCommand } from '@aws-sdk/client-cloudwatch';
import {
  DeregisterTargetsCommand,
  DescribeTargetHealthCommand,
  ElasticLoadBalancingV2Client,
  ElasticLoadBalancingV2ServiceException,
  RegisterTargetsCommand,
  type TargetHealthDescription,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isKilnError, type KilnError } from '@kiln/shared';
import { createAlarmWatch, createElbv2Balancer } from '@kiln/controller';
import { quietLog } from '../helpers/release.js';
import { failure } from '../helpers/failure.js';

// No AWS here: the SDK clients are real, their `send` is stubbed by aws-sdk-client-mock, so these tests
// pin down which calls the balancer makes, with what input, in which order, and what it does with
// each answer. The clock is injected and moves one second per DescribeTargetHealth, with a 1 ms poll
// period, so a wait of many "seconds" takes a few real milliseconds.

const REGION = 'eu-west-1';
const TG = 'arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/73e2d6bc24d8a067';
const credentials = { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' };


describe('elbv2 balancer', () => {
  let client: ElasticLoadBalancingV2Client;
  let elb: AwsClientStub<ElasticLoadBalancingV2Client>;
  let clock: number;
  beforeEach(() => {
    client = new ElasticLoadBalancingV2Client({ region: REGION, credentials });
    elb = mockClient(client);
    clock = 0;
  });
  afterEach(() => {
    elb.restore();
  });

  const balancer = (targetGroup = TG) => createElbv2Balancer({ client, region: REGION, targetGroup, log: quietLog(), now: () => clock, pollMs: 1 });
  const t = (...ids: string[]) => ids.map((id) => ({ id }));
  /** DescribeTargetHealth's answer: [id, state, reason?] per registration. */
  const health = (...targets: [string, string, string?][]): { TargetHealthDescriptions: TargetHealthDescription[] } => ({
    TargetHealthDescriptions: targets.map(([Id, State, Reason]) => ({ Target: { Id, Port: 8080 }, TargetHealth: { State: State as never, ...(Reason ? { Reason: Reason as never } : {}) } })),
  });
  /** Answers DescribeTargetHealth with `answers` in turn (the last one from then on), one second later each time. */
  const describes = (...answers: ReturnType<typeof health>[]) => {
    let n = 0;
    elb.on(DescribeTargetHealthCommand).callsFake(() => {
      clock += 1_000;
      return answers[Math.min(n++, answers.length - 1)]!;
    });
  };
  const elbError = (name: string, message = `${name} (test)`) => new ElasticLoadBalancingV2ServiceException({ name, message, $fault: 'client', $metadata: { httpStatusCode: 400 } });
  /** The command names the stub saw, in order. */
  const sequence = () => elb.calls().map((c) => c.args[0].constructor.name.replace(/Command$/, ''));
  const targetsOf = (call: { args: [{ input: object }] }) => (call.args[0].input as { Targets: { Id: string }[] }).Targets.map((x) => x.Id);

  it('register: registers the instance ids, then polls the whole group until every one is healthy', async () => {
    describes(
      health(['i-old1', 'healthy'], ['i-new1', 'initial', 'Elb.RegistrationInProgress']),
      health(['i-old1', 'healthy'], ['i-new1', 'healthy'], ['i-new2', 'unhealthy', 'Target.FailedHealthChecks']),
      health(['i-old1', 'healthy'], ['i-new1', 'healthy'], ['i-new2', 'healthy']),
    );
    // an id twice is registered once; the address is HAProxy's business
    await balancer().register([...t('i-new1', 'i-new2'), { id: 'i-new1', address: 'http://10.0.0.1:8080' }], { timeoutMs: 60_000 });

    expect(sequence()).toEqual(['RegisterTargets', 'DescribeTargetHealth', 'DescribeTargetHealth', 'DescribeTargetHealth']);
    expect(elb.commandCalls(RegisterTargetsCommand)[0]!.args[0].input).toEqual({ TargetGroupArn: TG, Targets: [{ Id: 'i-new1' }, { Id: 'i-new2' }] });
    // the whole group is described: a target absent from the answer is not registered
    expect(elb.commandCalls(DescribeTargetHealthCommand)[0]!.args[0].input).toEqual({ TargetGroupArn: TG });
  });

  it('register: targets that stay unhealthy give KILN_BALANCER_TIMEOUT at the deadline naming each stuck state, and all are deregistered again', async () => {
    describes(health(['i-new1', 'unhealthy', 'Target.FailedHealthChecks'], ['i-new2', 'healthy']));
    const t0 = performance.now();
    const err = await failure(balancer().register(t('i-new1', 'i-new2', 'i-new3'), { timeoutMs: 10_000 }));

    expect(err.code).toBe('KILN_BALANCER_TIMEOUT');
    expect(err.message).toContain(`timed out after 10000 ms waiting for targets i-new1, i-new2, i-new3 to be healthy in ${TG}`);
    expect(err.message).toContain('i-new1 (unhealthy: Target.FailedHealthChecks)');
    expect(err.message).toContain('i-new3 (not registered)');
    expect(err.message).not.toContain('i-new2 (');
    expect(err.details).toMatchObject({ targetGroup: TG, stuck: { 'i-new1': [{ state: 'unhealthy', reason: 'Target.FailedHealthChecks' }], 'i-new3': [] } });
    // one look per injected second, none after the deadline
    expect(elb.commandCalls(DescribeTargetHealthCommand)).toHaveLength(10);
    expect(performance.now() - t0).toBeLessThan(1_000);
    // a register ends with every target healthy or none taking traffic
    expect(sequence().at(-1)).toBe('DeregisterTargets');
    expect(elb.commandCalls(DeregisterTargetsCommand).map(targetsOf)).toEqual([['i-new1', 'i-new2', 'i-new3']]);
  });

  it.each(['Target.InvalidState', 'Target.NotInUse'])('register: a target that can never be healthy (%s) fails at once with KILN_BALANCER_FAILED and is deregistered', async (reason) => {
    describes(health(['i-new1', 'unused', reason], ['i-new2', 'initial']));
    const err = await failure(balancer().register(t('i-new1', 'i-new2'), { timeoutMs: 60_000 }));
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toContain(`can never become healthy in ${TG}: i-new1 (unused: ${reason})`);
    expect(sequence()).toEqual(['RegisterTargets', 'DescribeTargetHealth', 'DeregisterTargets']);
    expect(elb.commandCalls(DeregisterTargetsCommand).map(targetsOf)).toEqual([['i-new1', 'i-new2']]);
  });

  it('register: a failing RegisterTargets is KILN_BALANCER_FAILED "elbv2 RegisterTargets failed: …", the targets are deregistered anyway, and a failing cleanup does not hide the error', async () => {
    const cause = elbError('TargetGroupNotFoundException', 'One or more target groups not found');
    elb.on(RegisterTargetsCommand).rejects(cause);
    elb.on(DeregisterTargetsCommand).rejects(elbError('TargetGroupNotFoundException'));
    const err = await failure(balancer().register(t('i-new1'), { timeoutMs: 60_000 }));
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toBe('elbv2 RegisterTargets failed: TargetGroupNotFoundException: One or more target groups not found');
    expect(err.cause).toBe(cause);
    // a RegisterTargets cut off in flight may have taken effect: the cleanup is tried anyway
    expect(sequence()).toEqual(['RegisterTargets', 'DeregisterTargets']);
  });

  it('register: the caller\'s abort ends the wait with its reason, after the targets are deregistered; no call that changes something carries the signal', async () => {
    const ac = new AbortController();
    const reason = new Error('deploy cancelled');
    let n = 0;
    elb.on(DescribeTargetHealthCommand).callsFake(() => {
      if (++n === 3) ac.abort(reason);
      return health(['i-new1', 'initial']);
    });
    await expect(balancer().register(t('i-new1'), { timeoutMs: 60_000, signal: ac.signal })).rejects.toBe(reason);
    expect(sequence().at(-1)).toBe('DeregisterTargets');
    // only the polls carry one (the caller's and the deadline's)
    expect((elb.commandCalls(DescribeTargetHealthCommand)[0]!.args as unknown[])[1]).toHaveProperty('abortSignal');
    for (const cmd of [RegisterTargetsCommand, DeregisterTargetsCommand] as const) {
      for (const call of elb.commandCalls(cmd)) expect((call.args as unknown[])[1] ?? {}).not.toHaveProperty('abortSignal');
    }
  });

  it('drain: deregisters, then polls until every target is unused or gone (the deregistration delay); drainMs is not ELBv2\'s to choose', async () => {
    describes(
      health(['i-old1', 'draining', 'Target.DeregistrationInProgress'], ['i-old2', 'draining', 'Target.DeregistrationInProgress'], ['i-new1', 'healthy']),
      health(['i-old1', 'unhealthy.draining'], ['i-old2', 'unused', 'Target.NotRegistered'], ['i-new1', 'healthy']),
      health(['i-new1', 'healthy']),
    );
    await balancer().drain(t('i-old1', 'i-old2'), { timeoutMs: 600_000, drainMs: 1 });
    expect(sequence()).toEqual(['DeregisterTargets', 'DescribeTargetHealth', 'DescribeTargetHealth', 'DescribeTargetHealth']);
    expect(elb.commandCalls(DeregisterTargetsCommand)[0]!.args[0].input).toEqual({ TargetGroupArn: TG, Targets: [{ Id: 'i-old1' }, { Id: 'i-old2' }] });
  });

  it('drain: still draining at the deadline is KILN_BALANCER_TIMEOUT naming the target and its state', async () => {
    describes(health(['i-old1', 'draining', 'Target.DeregistrationInProgress'], ['i-old2', 'unused']));
    const err = await failure(balancer().drain(t('i-old1', 'i-old2'), { timeoutMs: 5_000 }));
    expect(err.code).toBe('KILN_BALANCER_TIMEOUT');
    expect(err.message).toContain('to be drained');
    expect(err.message).toContain('i-old1 (draining: Target.DeregistrationInProgress)');
    expect(err.message).not.toContain('i-old2 (');
    expect(elb.commandCalls(DeregisterTargetsCommand).map(targetsOf)).toEqual([['i-old1', 'i-old2']]);
  });

  it('drain: an instance that no longer exists (InvalidTarget for the batch) is skipped; the others are deregistered alone', async () => {
    elb.on(DeregisterTargetsCommand).callsFake((input: { Targets: { Id: string }[] }) => {
      if (input.Targets.some((x) => x.Id === 'i-gone')) throw elbError('InvalidTargetException');
      return {};
    });
    describes(health());
    await balancer().drain(t('i-old1', 'i-gone'), { timeoutMs: 600_000 });
    expect(elb.commandCalls(DeregisterTargetsCommand).map(targetsOf)).toEqual([['i-old1', 'i-gone'], ['i-old1'], ['i-gone']]);
  });

  it('drain: any other DeregisterTargets error is KILN_BALANCER_FAILED with the AWS error name', async () => {
    elb.on(DeregisterTargetsCommand).rejects(elbError('AccessDenied', 'not allowed'));
    const err = await failure(balancer().drain(t('i-old1'), { timeoutMs: 600_000 }));
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toBe('elbv2 DeregisterTargets failed: AccessDenied: not allowed');
    expect(sequence()).toEqual(['DeregisterTargets']);
  });

  it('empty lists make no call', async () => {
    await balancer().register([], { timeoutMs: 1_000 });
    await balancer().drain([], { timeoutMs: 1_000 });
    expect(elb.calls()).toHaveLength(0);
  });

  it('health maps ELBv2 states onto kiln\'s and keeps the reason code; an id the group does not list is unused', async () => {
    elb.on(DescribeTargetHealthCommand).resolves(
      health(
        ['i-a', 'healthy'],
        ['i-b', 'unhealthy', 'Target.Timeout'],
        ['i-c', 'initial', 'Elb.RegistrationInProgress'],
        ['i-d', 'draining', 'Target.DeregistrationInProgress'],
        ['i-e', 'unhealthy.draining', 'Target.DeregistrationInProgress'],
        ['i-f', 'unused', 'Target.InvalidState'],
        ['i-g', 'unavailable', 'Target.HealthCheckDisabled'],
        // one instance on two ports: healthy on one, still checked on the other
        ['i-h', 'healthy'],
        ['i-h', 'initial', 'Elb.RegistrationInProgress'],
      ),
    );
    const seen = await balancer().health(['i-a', 'i-b', 'i-c', 'i-d', 'i-e', 'i-f', 'i-g', 'i-h', 'i-x']);
    expect(Object.fromEntries(seen)).toEqual({
      'i-a': { state: 'healthy' },
      'i-b': { state: 'unhealthy', reason: 'Target.Timeout' },
      'i-c': { state: 'initial', reason: 'Elb.RegistrationInProgress' },
      'i-d': { state: 'draining', reason: 'Target.DeregistrationInProgress' },
      'i-e': { state: 'draining', reason: 'Target.DeregistrationInProgress' },
      'i-f': { state: 'unused', reason: 'Target.InvalidState' },
      'i-g': { state: 'unhealthy', reason: 'Target.HealthCheckDisabled' },
      'i-h': { state: 'initial', reason: 'Elb.RegistrationInProgress' },
      'i-x': { state: 'unused' },
    });
    expect(sequence()).toEqual(['DescribeTargetHealth']);
  });

  it('health: a DescribeTargetHealth error is KILN_BALANCER_FAILED naming service and operation', async () => {
    elb.on(DescribeTargetHealthCommand).rejects(elbError('TargetGroupNotFoundException', 'gone'));
    const err = await failure(balancer().health(['i-a']));
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toBe('elbv2 DescribeTargetHealth failed: TargetGroupNotFoundException: gone');
  });

  it('is kind elbv2 with the ARN as endpoint; stats is null (ELBv2 keeps no per-target counters)', async () => {
    const b = balancer();
    expect(b.kind).toBe('elbv2');
    expect(b.endpoint).toBe(TG);
    expect(await b.stats(['i-a'])).toBeNull();
    expect(elb.calls()).toHaveLength(0);
  });

  it.each([
    ['a name instead of an ARN', 'web', 'not an ELBv2 target group ARN'],
    ['a load balancer ARN', 'arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188', 'not an ELBv2 target group ARN'],
    ['another region', 'arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/73e2d6bc24d8a067', 'is in us-east-1'],
  ])('%s is refused with KILN_BALANCER_FAILED before any call', (_, arn, message) => {
    let err: unknown;
    try {
      balancer(arn);
    } catch (e) {
      err = e;
    }
    expect(isKilnError(err, 'KILN_BALANCER_FAILED')).toBe(true);
    expect((err as KilnError).message).toContain(message);
    expect(elb.calls()).toHaveLength(0);
  });
});

describe('cloudwatch alarm watch', () => {
  let client: CloudWatchClient;
  let cw: AwsClientStub<CloudWatchClient>;
  beforeEach(() => {
    client = new CloudWatchClient({ region: REGION, credentials });
    cw = mockClient(client);
  });
  afterEach(() => {
    cw.restore();
  });
  const watch = (names: string[]) => createAlarmWatch({ client, names, log: quietLog() });
  const alarm = (AlarmName: string, StateValue: 'OK' | 'ALARM' | 'INSUFFICIENT_DATA') => ({ AlarmName, StateValue });

  it('firing lists the watched alarms in ALARM, metric and composite, in the order given', async () => {
    cw.on(DescribeAlarmsCommand).resolves({
      MetricAlarms: [alarm('web-5xx', 'ALARM'), alarm('web-latency', 'OK'), alarm('web-hosts', 'INSUFFICIENT_DATA')],
      CompositeAlarms: [alarm('web-any', 'ALARM')],
    });
    expect(await watch(['web-any', 'web-latency', 'web-5xx', 'web-hosts']).firing()).toEqual(['web-any', 'web-5xx']);
    const input = cw.commandCalls(DescribeAlarmsCommand)[0]!.args[0].input;
    expect(input).toMatchObject({ AlarmNames: ['web-any', 'web-latency', 'web-5xx', 'web-hosts'] });
    // without AlarmTypes CloudWatch answers metric alarms only: a composite alarm would look missing
    expect(input.AlarmTypes).toEqual(expect.arrayContaining(['MetricAlarm', 'CompositeAlarm']));
  });

  it('firing follows NextToken', async () => {
    cw.on(DescribeAlarmsCommand)
      .resolvesOnce({ MetricAlarms: [alarm('a', 'OK')], NextToken: 'page-2' })
      .resolvesOnce({ MetricAlarms: [alarm('b', 'ALARM')] });
    expect(await watch(['a', 'b']).firing()).toEqual(['b']);
    expect(cw.commandCalls(DescribeAlarmsCommand).map((c) => c.args[0].input.NextToken)).toEqual([undefined, 'page-2']);
  });

  it('a name CloudWatch does not know is refused by check() (and by firing(): never read as "not firing")', async () => {
    cw.on(DescribeAlarmsCommand).resolves({ MetricAlarms: [alarm('web-5xx', 'OK')] });
    const w = watch(['web-5xx', 'web-5xxx']);
    const err = await failure(w.check());
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toContain('alarm web-5xxx does not exist');
    expect(err.details).toEqual({ missing: ['web-5xxx'] });
    expect((await failure(w.firing())).message).toContain('alarm web-5xxx does not exist');
    await watch(['web-5xx']).check();
  });

  it('a DescribeAlarms error is KILN_BALANCER_FAILED naming service, operation and the AWS error', async () => {
    cw.on(DescribeAlarmsCommand).rejects(new CloudWatchServiceException({ name: 'AccessDenied', message: 'no', $fault: 'client', $metadata: { httpStatusCode: 403 } }));
    const err = await failure(watch(['web-5xx']).firing());
    expect(err.code).toBe('KILN_BALANCER_FAILED');
    expect(err.message).toBe('cloudwatch DescribeAlarms failed: AccessDenied: no');
  });

  it('no names: nothing fires and no call is made', async () => {
    const w = watch([]);
    await w.check();
    expect(await w.firing()).toEqual([]);
    expect(cw.calls()).toHaveLength(0);
  });

  it('importing @kiln/controller does not load the CloudWatch SDK', () => {
    // A fresh Node, as an embedder or `kiln up` would import the package: which SDK packages its CommonJS cache holds.
    const script = [
      "import { createRequire } from 'node:module';",
      "await import('@kiln/controller');",
      "const cache = Object.keys(createRequire(process.cwd() + '/')('node:module')._cache);",
      "console.log(JSON.stringify(cache.some((k) => k.includes('@aws-sdk/client-cloudwatch/'))));",
    ].join('\n');
    const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: path.dirname(new URL(import.meta.url).pathname), encoding: 'utf8' });
    expect(out.status, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toBe(false);
  });
});
