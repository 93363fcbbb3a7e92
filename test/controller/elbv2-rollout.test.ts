// Issue 12: a hotfix of an ec2 fleet with a target group drains through ELBv2, as a group swap does:
// each batch deregistered (and drained) before its install, registered and healthy in the target
// group before the next; --alarm fails a soak when a CloudWatch alarm fires. Real controller, real
// S3, real agents and apps; ELBv2, CloudWatch and EC2 (only the image a fleet is created with) are
// aws-sdk-client-mock stubs with a target group's state behind them.
import { CloudWatchClient, DescribeAlarmsCommand } from '@aws-sdk/client-cloudwatch';
import { DescribeImagesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { DeregisterTargetsCommand, DescribeTargetHealthCommand, ElasticLoadBalancingV2Client, RegisterTargetsCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAlarmWatch, createEc2Provider, createElbv2Balancer } from '@kiln/controller';
import { deploymentOver, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { makeAgent, until, type TestAgent } from '../helpers/agent.js';
import { makeKeys, pushReleases, quietLog } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const REGION = 'eu-west-1';
const TG = 'arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/73e2d6bc24d8a067';
const credentials = { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' };
const IDS = ['i-0a1', 'i-0a2', 'i-0a3'];

let s3: S3Fixture;
let ctl: TestController;
const agents: TestAgent[] = [];
const keys = makeKeys();
const elbClient = new ElasticLoadBalancingV2Client({ region: REGION, credentials });
const elb = mockClient(elbClient);
const cwClient = new CloudWatchClient({ region: REGION, credentials });
const cw = mockClient(cwClient);
const ec2Client = new EC2Client({ region: REGION, credentials });
const ec2 = mockClient(ec2Client);

/** The target group: each registered id and its state; every change, timed. */
const targets = new Map<string, string>(IDS.map((id) => [id, 'healthy']));
const changes: Array<{ op: 'register' | 'deregister'; id: string; at: number }> = [];
let alarmState = 'OK';

beforeAll(async () => {
  elb.on(RegisterTargetsCommand).callsFake((input) => {
    for (const t of input.Targets) (targets.set(t.Id, 'healthy'), changes.push({ op: 'register', id: t.Id, at: Date.now() }));
    return {};
  });
  elb.on(DeregisterTargetsCommand).callsFake((input) => {
    for (const t of input.Targets) (targets.delete(t.Id), changes.push({ op: 'deregister', id: t.Id, at: Date.now() }));
    return {};
  });
  elb.on(DescribeTargetHealthCommand).callsFake(() => ({ TargetHealthDescriptions: [...targets].map(([Id, State]) => ({ Target: { Id, Port: 8080 }, TargetHealth: { State } })) }));
  cw.on(DescribeAlarmsCommand).callsFake((input) => ({ MetricAlarms: input.AlarmNames.filter((n: string) => n === 'web-5xx').map((AlarmName: string) => ({ AlarmName, StateValue: alarmState })) }));
  ec2.on(DescribeImagesCommand).resolves({ Images: [{ ImageId: 'ami-1', Name: 'web', State: 'available', CreationDate: '2026-12-01T00:00:00.000Z' }] });

  s3 = await startS3();
  await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': {}, '3.0.0': {} });
  const provider = createEc2Provider({ region: REGION, client: ec2Client, log: quietLog(), pollMs: 20 });
  ctl = await startController({
    s3,
    keys,
    launch: testLaunch(provider, s3),
    balancers: {
      targetGroup: (arn) => createElbv2Balancer({ client: elbClient, region: REGION, targetGroup: arn, log: quietLog(), pollMs: 20 }),
      alarms: async (names) => {
        const watch = createAlarmWatch({ client: cwClient, names, log: quietLog() });
        await watch.check();
        return watch;
      },
    },
  });
  const created = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'web', channel: 'stable', provider: 'ec2', image: 'ami-1', size: 3, targetGroup: TG });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  expect(created.body.fleet.endpoint).toBe(TG);
  // The fleet's instances, as agents on this machine with EC2-like ids.
  for (const instanceId of IDS) {
    const a = await makeAgent({ s3, keys, instanceId, config: { channel: 'stable', controller: { url: ctl.agentsUrl, credential: created.body.agentCredential } } });
    agents.push(a);
    await a.agent.start();
  }
  await until('3 instances on 1.0.0', async () => (await ctl.api('GET', '/v1/fleets/web/instances')).body.instances.filter((r: any) => r.connected && r.installed === '1.0.0' && r.operation === null).length === 3, 20_000);
}, 60_000);

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await ctl?.close();
  await s3?.close();
  for (const m of [elb, cw, ec2]) m.restore();
});

const installedAt = (id: string) => Date.parse(ctl.server.kiln.hub.get(id)!.report!.installed!.installedAt);

describe('an ec2 fleet behind an ELBv2 target group', () => {
  it('a hotfix --batch 1 deregisters each instance before its install and registers it, healthy, before the next one leaves', async () => {
    changes.length = 0;
    const d = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '2.0.0', batch: { count: 1 }, healthTimeoutMs: 20_000 });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    expect(d.body.deployment.balancer).toBe(TG);
    const done = await deploymentOver(d.body.deployment.id, ctl, 60_000);
    expect(done.state, done.verdict).toBe('succeeded');
    // One at a time: out, back, then the next.
    expect(changes.map((c) => `${c.op} ${c.id}`)).toEqual(done.batches.flatMap(([id]: string[]) => [`deregister ${id}`, `register ${id}`]));
    for (const id of IDS) {
      const out = changes.find((c) => c.op === 'deregister' && c.id === id)!.at;
      const back = changes.find((c) => c.op === 'register' && c.id === id)!.at;
      expect(installedAt(id)).toBeGreaterThanOrEqual(out);
      expect(installedAt(id)).toBeLessThanOrEqual(back);
    }
    expect([...targets.values()]).toEqual(['healthy', 'healthy', 'healthy']);
  }, 60_000);

  it('--alarm: an alarm that fires during the soak fails the batch with KILN_ERROR_RATE, and it is rolled back through the target group', async () => {
    const missing = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', soakMs: 500, alarms: ['web-typo'] });
    expect([missing.status, missing.body.error.code]).toEqual([400, 'KILN_REQUEST_INVALID']);
    expect(missing.body.error.message).toContain('alarms: cloudwatch: alarm web-typo does not exist');
    // --max-error-rate reads per-target counters, which ELBv2 does not keep.
    const rate = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', soakMs: 500, maxErrorRate: 0.1 });
    expect(rate.body.error.message).toContain('has an ELBv2 target group, which keeps none (give CloudWatch alarms instead: --alarm NAME)');

    changes.length = 0;
    alarmState = 'ALARM';
    const d = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', batch: { count: 1 }, soakMs: 2_000, alarms: ['web-5xx'], healthTimeoutMs: 20_000 });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    const done = await deploymentOver(d.body.deployment.id, ctl, 60_000);
    alarmState = 'OK';
    expect(done.state).toBe('failed');
    expect(done.error).toMatchObject({ code: 'KILN_ERROR_RATE', message: expect.stringContaining('CloudWatch alarm(s) fired: web-5xx during the soak') });
    expect(done.soaks[0]).toMatchObject({ passed: false, alarms: ['web-5xx'], newTargets: null });
    const [first] = done.batches[0];
    // Out for the install, back, out for the rollback, back: the others never left.
    expect(changes.map((c) => `${c.op} ${c.id}`)).toEqual([`deregister ${first}`, `register ${first}`, `deregister ${first}`, `register ${first}`]);
    expect(ctl.server.kiln.hub.get(first)!.report!.installed!.version).toBe('2.0.0');
  }, 60_000);
});
