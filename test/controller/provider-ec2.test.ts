import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import {
  CopyImageCommand,
  CreateImageCommand,
  DeleteSnapshotCommand,
  DeregisterImageCommand,
  DescribeImagesCommand,
  DescribeInstancesCommand,
  DescribeSnapshotsCommand,
  EC2Client,
  EC2ServiceException,
  RunInstancesCommand,
  StartInstancesCommand,
  StopInstancesCommand,
  TerminateInstancesCommand,
  type Image,
  type Instance,
} from '@aws-sdk/client-ec2';
import { mockClient, type AwsClientStub } from 'aws-sdk-client-mock';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createEc2Provider, renderUserData, type Ec2ProviderOptions } from '@kiln/controller';
import { quietLog, tempDir } from '../helpers/release.js';
import { failure } from '../helpers/failure.js';

// There is no EC2 endpoint here: the SDK client is real, its `send` is stubbed by aws-sdk-client-mock,
// so these tests pin down which calls the provider makes, with what input, in which order, and
// what it does with each answer. Waits run on real time with small polls and deadlines.

const REGION = 'eu-west-1';
const TAGS = { 'kiln:fleet': 'web', 'kiln:group': 'g-2', 'kiln:release': 'web@1.2.0', 'kiln:bake-id': 'bake-7' };
const AGENT = { app: 'web', channel: 'prod', s3: { bucket: 'rel', prefix: 'kiln' }, keys: ['-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----'] };

const credentials = { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' };
const newClient = (region = REGION) => new EC2Client({ region, credentials });

// The home region's client. Mocked per instance (not the EC2Client class), so that the regional
// clients of copyImage get stubs of their own.
let home: EC2Client;
let ec2: AwsClientStub<EC2Client>;
beforeEach(() => {
  home = newClient();
  ec2 = mockClient(home);
});
afterEach(() => {
  ec2.restore();
});

function provider(extra: Partial<Ec2ProviderOptions> = {}) {
  return createEc2Provider({ region: REGION, client: home, log: quietLog(), pollMs: 10, ...extra });
}

function awsError(name: string, message = `${name} (test)`): EC2ServiceException {
  return new EC2ServiceException({ name, message, $fault: 'client', $metadata: { httpStatusCode: 400 } });
}

function instance(id: string, state: string, extra: Partial<Instance> = {}): Instance {
  return { InstanceId: id, ImageId: 'ami-0base', State: { Name: state as never }, LaunchTime: new Date('2026-01-02T03:04:05Z'), ...extra };
}
const reservation = (...instances: Instance[]) => ({ Reservations: [{ Instances: instances }] });

function image(id: string, state: string, extra: Partial<Image> = {}): Image {
  return { ImageId: id, Name: `name-${id}`, State: state as never, CreationDate: '2026-01-02T03:04:05.000Z', ...extra };
}
const images = (...list: Image[]) => ({ Images: list });

/** The command names the stub saw, in order. */
const sequence = (stub: AwsClientStub<EC2Client> = ec2) => stub.calls().map((c) => c.args[0].constructor.name.replace(/Command$/, ''));


async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await p;
  return { value, ms: performance.now() - t0 };
}

describe('ec2 provider: the AWS SDKs are loaded lazily', () => {
  it('importing @kiln/controller loads neither the EC2 nor the ELBv2 SDK; making an ec2 provider loads the EC2 SDK only (ELBv2 is the balancer\'s)', () => {
    // A fresh Node, as an embedder or `kiln up` would import the package: which SDK packages its CommonJS cache holds.
    const loaded = (code: string): boolean[] => {
      const script = [
        "import { createRequire } from 'node:module';",
        "const { createEc2Provider, createLogger } = await import('@kiln/controller').then(async (c) => ({ ...c, ...(await import('@kiln/shared')) }));",
        code,
        "const cache = Object.keys(createRequire(process.cwd() + '/')('node:module')._cache);",
        "console.log(JSON.stringify(['client-ec2', 'client-elastic-load-balancing-v2'].map((p) => cache.some((k) => k.includes(`@aws-sdk/${p}/`)))));",
      ].join('\n');
      const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: path.dirname(new URL(import.meta.url).pathname), encoding: 'utf8' });
      expect(out.status, out.stderr).toBe(0);
      return JSON.parse(out.stdout) as boolean[];
    };
    expect(loaded('')).toEqual([false, false]);
    expect(loaded("createEc2Provider({ region: 'eu-west-1', log: createLogger({ level: 'silent' }) });")).toEqual([true, false]);
  });
});

describe('ec2 provider: launch', () => {
  it('runs count instances with tags on instance and volume, IMDSv2 and user data that configures the agent', async () => {
    ec2.on(RunInstancesCommand).resolves({ Instances: [instance('i-0a1', 'pending', { Tags: [{ Key: 'kiln:fleet', Value: 'web' }] }), instance('i-0a2', 'pending')] });
    const p = provider({ subnetId: 'subnet-1', securityGroupIds: ['sg-1', 'sg-2'], instanceType: 'm7g.large', iamInstanceProfile: 'kiln-agent', keyName: 'ops' });
    const launched = await p.launch({ imageId: 'ami-0base', count: 2, tags: TAGS, boot: { agent: AGENT } });

    expect(p.name).toBe('ec2');
    expect(launched.map((i) => [i.id, i.state, i.imageId])).toEqual([
      ['i-0a1', 'pending', 'ami-0base'],
      ['i-0a2', 'pending', 'ami-0base'],
    ]);
    expect(launched[0]!.tags).toEqual({ 'kiln:fleet': 'web' });
    expect(launched[0]!.launchedAt).toBe('2026-01-02T03:04:05.000Z');

    const calls = ec2.commandCalls(RunInstancesCommand);
    expect(calls).toHaveLength(1);
    const input = calls[0]!.args[0].input;
    expect(input).toMatchObject({
      ImageId: 'ami-0base',
      MinCount: 2,
      MaxCount: 2,
      InstanceType: 'm7g.large',
      SubnetId: 'subnet-1',
      SecurityGroupIds: ['sg-1', 'sg-2'],
      KeyName: 'ops',
      IamInstanceProfile: { Name: 'kiln-agent' },
      MetadataOptions: { HttpTokens: 'required' },
    });
    expect(input.ClientToken).toMatch(/^[0-9a-f-]{36}$/);
    const expectedTags = Object.entries(TAGS).map(([Key, Value]) => ({ Key, Value }));
    expect(input.TagSpecifications).toEqual([
      { ResourceType: 'instance', Tags: expectedTags },
      { ResourceType: 'volume', Tags: expectedTags },
    ]);
    const script = Buffer.from(input.UserData!, 'base64').toString('utf8');
    expect(script).toBe(renderUserData({ agent: AGENT }));
    expect(script.startsWith('#!/bin/sh\n')).toBe(true);
    expect(script).toContain(JSON.stringify(AGENT).slice(0, -1));
    expect(script).toContain('latest/api/token');
  });

  it('passes an instance profile ARN as an ARN and leaves unset options out', async () => {
    ec2.on(RunInstancesCommand).resolves({ Instances: [instance('i-0a1', 'pending')] });
    await provider({ iamInstanceProfile: 'arn:aws:iam::123456789012:instance-profile/kiln' }).launch({ imageId: 'ami-0base', count: 1, tags: {}, boot: { agent: AGENT } });
    const input = ec2.commandCalls(RunInstancesCommand)[0]!.args[0].input;
    expect(input.IamInstanceProfile).toEqual({ Arn: 'arn:aws:iam::123456789012:instance-profile/kiln' });
    expect(input).not.toHaveProperty('SubnetId');
    expect(input).not.toHaveProperty('KeyName');
    expect(input.InstanceType).toBe('t3.micro');
  });

  it.each(['InvalidAMIID.NotFound', 'InvalidAMIID.Malformed'])('%s becomes KILN_IMAGE_NOT_FOUND naming the image', async (name) => {
    ec2.on(RunInstancesCommand).rejects(awsError(name));
    const err = await failure(provider().launch({ imageId: 'ami-0gone', count: 1, tags: TAGS, boot: { agent: AGENT } }));
    expect(err.code).toBe('KILN_IMAGE_NOT_FOUND');
    expect(err.message).toContain('ami-0gone');
    expect((err.cause as Error).name).toBe(name);
  });

  it('any other EC2 error becomes KILN_PROVIDER_FAILED "ec2 RunInstances failed: <name>: <message>" with the cause', async () => {
    const cause = awsError('InsufficientInstanceCapacity', 'no m7g.large left in eu-west-1a');
    ec2.on(RunInstancesCommand).rejects(cause);
    const err = await failure(provider().launch({ imageId: 'ami-0base', count: 1, tags: TAGS, boot: { agent: AGENT } }));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toBe('ec2 RunInstances failed: InsufficientInstanceCapacity: no m7g.large left in eu-west-1a');
    expect(err.cause).toBe(cause);
  });

  it('refuses user data over 16 KiB before calling EC2', async () => {
    ec2.on(RunInstancesCommand).resolves({ Instances: [] });
    const err = await failure(provider().launch({ imageId: 'ami-0base', count: 1, tags: TAGS, boot: { agent: { ...AGENT, pad: 'x'.repeat(16 * 1024) } } }));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toMatch(/user data is \d+ bytes, over EC2's limit of 16384/);
    expect(ec2.calls()).toHaveLength(0);
  });
});

describe('ec2 provider: waits', () => {
  it('waitRunning polls DescribeInstances by id until all run and returns them with their private address', async () => {
    ec2
      .on(DescribeInstancesCommand)
      .resolvesOnce(reservation(instance('i-1', 'pending')))
      .resolvesOnce(reservation(instance('i-1', 'running'), instance('i-2', 'pending')))
      .resolves(reservation(instance('i-2', 'running', { PrivateIpAddress: '10.0.0.2' }), instance('i-1', 'running', { PrivateIpAddress: '10.0.0.1' })));
    const running = await provider().waitRunning(['i-1', 'i-2'], { timeoutMs: 5_000 });
    expect(running.map((i) => [i.id, i.state, i.address])).toEqual([
      ['i-1', 'running', '10.0.0.1'],
      ['i-2', 'running', '10.0.0.2'],
    ]);
    const calls = ec2.commandCalls(DescribeInstancesCommand);
    expect(calls).toHaveLength(3);
    expect(calls[0]!.args[0].input.Filters).toEqual([{ Name: 'instance-id', Values: ['i-1', 'i-2'] }]);
  });

  it('a state that never changes gives KILN_PROVIDER_TIMEOUT at the deadline, naming the ids and their states', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-1', 'pending'), instance('i-2', 'running')));
    const t0 = performance.now();
    const err = await failure(provider({ pollMs: 20 }).waitRunning(['i-1', 'i-2', 'i-3'], { timeoutMs: 300 }));
    const ms = performance.now() - t0;
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(err.message).toContain('timed out after 300 ms');
    expect(err.message).toContain('i-1 (pending)');
    expect(err.message).toContain('i-3 (not found)');
    expect(err.message).not.toContain('i-2 (');
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(1_500);
    // it kept polling until then
    expect(ec2.commandCalls(DescribeInstancesCommand).length).toBeGreaterThan(5);
  });

  it('a Describe call that never answers is cut off at the deadline too', async () => {
    ec2.on(DescribeInstancesCommand).callsFake(() => new Promise(() => {}));
    const { value: err, ms } = await timed(failure(provider().waitRunning(['i-1'], { timeoutMs: 200 })));
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(ms).toBeLessThan(1_500);
  });

  it('an instance that terminates while awaited fails at once with KILN_PROVIDER_FAILED', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-1', 'shutting-down'), instance('i-2', 'running')));
    const { value: err, ms } = await timed(failure(provider().waitRunning(['i-1', 'i-2'], { timeoutMs: 5_000 })));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toContain('i-1 terminated');
    expect(ms).toBeLessThan(1_000);
  });

  it('aborting the signal ends the wait with the abort reason', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-1', 'pending')));
    const ac = new AbortController();
    const reason = new Error('operator cancelled');
    setTimeout(() => ac.abort(reason), 100);
    const t0 = performance.now();
    await expect(provider({ pollMs: 30 }).waitRunning(['i-1'], { timeoutMs: 10_000, signal: ac.signal })).rejects.toBe(reason);
    expect(performance.now() - t0).toBeLessThan(1_000);
  });

  it('stop sends StopInstances and waits until stopped; start sends StartInstances and waits until running', async () => {
    ec2
      .on(DescribeInstancesCommand)
      .resolvesOnce(reservation(instance('i-1', 'stopping')))
      .resolvesOnce(reservation(instance('i-1', 'stopped')))
      .resolvesOnce(reservation(instance('i-1', 'pending')))
      .resolves(reservation(instance('i-1', 'running')));
    const p = provider();
    await p.stop(['i-1'], { timeoutMs: 5_000 });
    await p.start(['i-1'], { timeoutMs: 5_000 });
    expect(sequence()).toEqual(['StopInstances', 'DescribeInstances', 'DescribeInstances', 'StartInstances', 'DescribeInstances', 'DescribeInstances']);
    expect(ec2.commandCalls(StopInstancesCommand)[0]!.args[0].input.InstanceIds).toEqual(['i-1']);
    expect(ec2.commandCalls(StartInstancesCommand)[0]!.args[0].input.InstanceIds).toEqual(['i-1']);
  });

  it('a stop stuck in stopping times out naming the state', async () => {
    ec2.on(StopInstancesCommand).resolves({});
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-1', 'stopping')));
    const err = await failure(provider().stop(['i-1'], { timeoutMs: 150 }));
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(err.message).toContain('to be stopped');
    expect(err.message).toContain('i-1 (stopping)');
  });

  it('empty id lists make no call', async () => {
    const p = provider();
    await p.stop([], { timeoutMs: 10 });
    await p.start([], { timeoutMs: 10 });
    await p.terminate([]);
    expect(await p.waitRunning([], { timeoutMs: 10 })).toEqual([]);
    expect(ec2.calls()).toHaveLength(0);
  });
});

describe('ec2 provider: createImage', () => {
  const snapshotMappings = { BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { SnapshotId: 'snap-root' } }, { DeviceName: '/dev/sdb', Ebs: { SnapshotId: 'snap-data' } }] };

  it('stops a running instance first, then CreateImage tagged on image and snapshot, then waits until available', async () => {
    ec2
      .on(DescribeInstancesCommand)
      .resolvesOnce(reservation(instance('i-b', 'running')))
      .resolvesOnce(reservation(instance('i-b', 'stopping')))
      .resolves(reservation(instance('i-b', 'stopped')));
    ec2.on(CreateImageCommand).resolves({ ImageId: 'ami-new' });
    ec2
      .on(DescribeImagesCommand)
      .resolvesOnce(images())
      .resolvesOnce(images(image('ami-new', 'pending')))
      .resolves(images(image('ami-new', 'available', { Tags: [{ Key: 'kiln:release', Value: 'web@1.2.0' }] })));
    const made = await provider().createImage('i-b', { name: 'web-1.2.0-bake-7', tags: TAGS }, { timeoutMs: 5_000 });

    expect(made).toEqual({ id: 'ami-new', name: 'name-ami-new', state: 'available', region: REGION, tags: { 'kiln:release': 'web@1.2.0' }, createdAt: '2026-01-02T03:04:05.000Z' });
    expect(sequence()).toEqual(['DescribeInstances', 'StopInstances', 'DescribeInstances', 'DescribeInstances', 'CreateImage', 'DescribeImages', 'DescribeImages', 'DescribeImages']);
    const input = ec2.commandCalls(CreateImageCommand)[0]!.args[0].input;
    const expectedTags = Object.entries(TAGS).map(([Key, Value]) => ({ Key, Value }));
    expect(input).toEqual({
      InstanceId: 'i-b',
      Name: 'web-1.2.0-bake-7',
      TagSpecifications: [
        { ResourceType: 'image', Tags: expectedTags },
        { ResourceType: 'snapshot', Tags: expectedTags },
      ],
    });
    expect(ec2.commandCalls(DescribeImagesCommand)[0]!.args[0].input).toMatchObject({ Owners: ['self'], Filters: [{ Name: 'image-id', Values: ['ami-new'] }] });
  });

  it('an instance already stopped is not stopped again', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-b', 'stopped')));
    ec2.on(CreateImageCommand).resolves({ ImageId: 'ami-new' });
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-new', 'available')));
    await provider().createImage('i-b', { name: 'n', tags: TAGS }, { timeoutMs: 5_000 });
    expect(sequence()).toEqual(['DescribeInstances', 'CreateImage', 'DescribeImages']);
  });

  it('an unknown instance is KILN_INSTANCE_NOT_FOUND and creates nothing', async () => {
    ec2.on(DescribeInstancesCommand).resolves({ Reservations: [] });
    const err = await failure(provider().createImage('i-gone', { name: 'n', tags: TAGS }, { timeoutMs: 5_000 }));
    expect(err.code).toBe('KILN_INSTANCE_NOT_FOUND');
    expect(err.message).toContain('i-gone');
    expect(ec2.commandCalls(CreateImageCommand)).toHaveLength(0);
  });

  it('a wait past the deadline deregisters the image, deletes its snapshots and those of the bake, then KILN_PROVIDER_TIMEOUT', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-b', 'stopped')));
    ec2.on(CreateImageCommand).resolves({ ImageId: 'ami-slow' });
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-slow', 'pending', snapshotMappings)));
    ec2.on(DescribeSnapshotsCommand).resolves({ Snapshots: [{ SnapshotId: 'snap-late' }] });
    const t0 = performance.now();
    const err = await failure(provider().createImage('i-b', { name: 'n', tags: TAGS }, { timeoutMs: 250 }));
    const ms = performance.now() - t0;

    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(err.message).toContain('ami-slow (pending)');
    expect(ms).toBeGreaterThanOrEqual(240);
    expect(ms).toBeLessThan(1_500);
    expect(ec2.commandCalls(DeregisterImageCommand).map((c) => c.args[0].input.ImageId)).toEqual(['ami-slow']);
    expect(ec2.commandCalls(DeleteSnapshotCommand).map((c) => c.args[0].input.SnapshotId)).toEqual(['snap-root', 'snap-data', 'snap-late']);
    expect(ec2.commandCalls(DescribeSnapshotsCommand)[0]!.args[0].input).toEqual({
      OwnerIds: ['self'],
      Filters: [
        { Name: 'tag:kiln:bake-id', Values: ['bake-7'] },
        { Name: 'description', Values: ['*ami-slow*'] },
      ],
    });
    // deregistered before its snapshots are deleted (EC2 refuses to delete a snapshot a registered image uses)
    const seq = sequence();
    expect(seq.indexOf('DeregisterImage')).toBeLessThan(seq.indexOf('DeleteSnapshot'));
  });

  it('an image that goes failed is reaped the same way and gives KILN_PROVIDER_FAILED with EC2\'s reason', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-b', 'stopped')));
    ec2.on(CreateImageCommand).resolves({ ImageId: 'ami-bad' });
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-bad', 'failed', { ...snapshotMappings, StateReason: { Message: 'snapshot copy failed' } })));
    const err = await failure(provider().createImage('i-b', { name: 'n', tags: { 'kiln:fleet': 'web' } }, { timeoutMs: 5_000 }));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toContain('ami-bad');
    expect(err.message).toContain('snapshot copy failed');
    expect(ec2.commandCalls(DeregisterImageCommand)).toHaveLength(1);
    expect(ec2.commandCalls(DeleteSnapshotCommand).map((c) => c.args[0].input.SnapshotId)).toEqual(['snap-root', 'snap-data']);
    // no kiln:bake-id tag: no search by it
    expect(ec2.commandCalls(DescribeSnapshotsCommand)).toHaveLength(0);
  });

  it('a failing reap does not hide the original error', async () => {
    ec2.on(DescribeInstancesCommand).resolves(reservation(instance('i-b', 'stopped')));
    ec2.on(CreateImageCommand).resolves({ ImageId: 'ami-slow' });
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-slow', 'pending', snapshotMappings)));
    ec2.on(DeregisterImageCommand).rejects(awsError('UnauthorizedOperation'));
    const err = await failure(provider().createImage('i-b', { name: 'n', tags: TAGS }, { timeoutMs: 100 }));
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
  });
});

describe('ec2 provider: copyImage', () => {
  const SOURCE = image('ami-src', 'available', { Name: 'web-1.2.0', Tags: [{ Key: 'kiln:release', Value: 'web@1.2.0' }] });

  /** One mocked client per region, handed out by regionsClient. */
  function regional(regions: string[]) {
    const clients = new Map(regions.map((r) => [r, newClient(r)] as const));
    const stubs = new Map([...clients].map(([r, c]) => [r, mockClient(c)] as const));
    const regionsClient = (r: string) => {
      const c = clients.get(r);
      if (!c) throw new Error(`no client for ${r}`);
      return c;
    };
    return { regionsClient, stub: (r: string) => stubs.get(r)! };
  }

  it('copies to every region in parallel with the source name and tags, and waits until all are available', async () => {
    ec2.on(DescribeImagesCommand).resolves(images(SOURCE));
    const reg = regional(['us-east-1', 'ap-south-1']);
    reg.stub('us-east-1').on(CopyImageCommand).resolves({ ImageId: 'ami-us' });
    reg.stub('us-east-1').on(DescribeImagesCommand).resolvesOnce(images(image('ami-us', 'pending'))).resolves(images(image('ami-us', 'available')));
    reg.stub('ap-south-1').on(CopyImageCommand).resolves({ ImageId: 'ami-ap' });
    reg.stub('ap-south-1').on(DescribeImagesCommand).resolves(images(image('ami-ap', 'available')));

    const copies = await provider({ regionsClient: reg.regionsClient }).copyImage('ami-src', ['us-east-1', 'ap-south-1'], { timeoutMs: 5_000 });
    expect(copies.map((c) => [c.id, c.region, c.state])).toEqual([
      ['ami-us', 'us-east-1', 'available'],
      ['ami-ap', 'ap-south-1', 'available'],
    ]);
    for (const r of ['us-east-1', 'ap-south-1']) {
      const input = reg.stub(r).commandCalls(CopyImageCommand)[0]!.args[0].input;
      expect(input).toMatchObject({ SourceImageId: 'ami-src', SourceRegion: REGION, Name: 'web-1.2.0' });
      expect(input.TagSpecifications).toEqual([
        { ResourceType: 'image', Tags: [{ Key: 'kiln:release', Value: 'web@1.2.0' }] },
        { ResourceType: 'snapshot', Tags: [{ Key: 'kiln:release', Value: 'web@1.2.0' }] },
      ]);
    }
    // parallel: the second copy was started before the first region was polled (sinon numbers calls across stubs)
    const callId = (call: unknown) => (call as { callId: number }).callId;
    expect(callId(reg.stub('ap-south-1').commandCalls(CopyImageCommand)[0])).toBeLessThan(callId(reg.stub('us-east-1').commandCalls(DescribeImagesCommand)[0]));
  });

  it('when one region fails, the copy made in the other region is deleted with its snapshots and the error is thrown', async () => {
    ec2.on(DescribeImagesCommand).resolves(images(SOURCE));
    const reg = regional(['us-east-1', 'ap-south-1']);
    const us = reg.stub('us-east-1');
    us.on(CopyImageCommand).resolves({ ImageId: 'ami-us' });
    us.on(DescribeImagesCommand).resolves(images(image('ami-us', 'pending', { BlockDeviceMappings: [{ Ebs: { SnapshotId: 'snap-us' } }] })));
    reg.stub('ap-south-1').on(CopyImageCommand).rejects(awsError('ResourceLimitExceeded', 'too many concurrent copies'));

    const t0 = performance.now();
    const err = await failure(provider({ regionsClient: reg.regionsClient }).copyImage('ami-src', ['us-east-1', 'ap-south-1'], { timeoutMs: 10_000 }));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toBe('ec2 CopyImage (to ap-south-1) failed: ResourceLimitExceeded: too many concurrent copies');
    // the failure stopped the other wait: no sitting out the 10 s deadline
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(us.commandCalls(DeregisterImageCommand).map((c) => c.args[0].input.ImageId)).toEqual(['ami-us']);
    expect(us.commandCalls(DeleteSnapshotCommand).map((c) => c.args[0].input.SnapshotId)).toEqual(['snap-us']);
    expect(ec2.commandCalls(DeregisterImageCommand)).toHaveLength(0);
  });

  it('a copy that never becomes available times out and every copy is deleted', async () => {
    ec2.on(DescribeImagesCommand).resolves(images(SOURCE));
    const reg = regional(['us-east-1', 'ap-south-1']);
    reg.stub('us-east-1').on(CopyImageCommand).resolves({ ImageId: 'ami-us' });
    reg.stub('us-east-1').on(DescribeImagesCommand).resolves(images(image('ami-us', 'available')));
    reg.stub('ap-south-1').on(CopyImageCommand).resolves({ ImageId: 'ami-ap' });
    reg.stub('ap-south-1').on(DescribeImagesCommand).resolves(images(image('ami-ap', 'pending')));

    const err = await failure(provider({ regionsClient: reg.regionsClient }).copyImage('ami-src', ['us-east-1', 'ap-south-1'], { timeoutMs: 200 }));
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(err.message).toContain('ami-ap in ap-south-1');
    expect(reg.stub('us-east-1').commandCalls(DeregisterImageCommand).map((c) => c.args[0].input.ImageId)).toEqual(['ami-us']);
    expect(reg.stub('ap-south-1').commandCalls(DeregisterImageCommand).map((c) => c.args[0].input.ImageId)).toEqual(['ami-ap']);
  });

  it('an unknown source image is KILN_IMAGE_NOT_FOUND and copies nothing', async () => {
    ec2.on(DescribeImagesCommand).resolves(images());
    const reg = regional(['us-east-1']);
    const err = await failure(provider({ regionsClient: reg.regionsClient }).copyImage('ami-gone', ['us-east-1'], { timeoutMs: 1_000 }));
    expect(err.code).toBe('KILN_IMAGE_NOT_FOUND');
    expect(reg.stub('us-east-1').calls()).toHaveLength(0);
  });
});

describe('ec2 provider: describe, delete, terminate', () => {
  it('describeInstances filters by every tag, leaves terminated out and follows NextToken', async () => {
    ec2
      .on(DescribeInstancesCommand)
      .resolvesOnce({ ...reservation(instance('i-1', 'running'), instance('i-2', 'stopped')), NextToken: 'page-2' })
      .resolvesOnce(reservation(instance('i-3', 'pending')));
    const found = await provider().describeInstances({ 'kiln:fleet': 'web', 'kiln:group': 'g-2' });
    expect(found.map((i) => `${i.id}:${i.state}`)).toEqual(['i-1:running', 'i-2:stopped', 'i-3:pending']);
    const calls = ec2.commandCalls(DescribeInstancesCommand);
    expect(calls).toHaveLength(2);
    expect(calls[0]!.args[0].input).toEqual({
      Filters: [
        { Name: 'tag:kiln:fleet', Values: ['web'] },
        { Name: 'tag:kiln:group', Values: ['g-2'] },
        { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
      ],
      NextToken: undefined,
    });
    expect(calls[1]!.args[0].input.NextToken).toBe('page-2');
  });

  it('describeImages: own images by tags or ids, states mapped, region set', async () => {
    ec2
      .on(DescribeImagesCommand)
      .resolves(images(image('ami-1', 'available'), image('ami-2', 'pending'), image('ami-3', 'failed'), image('ami-4', 'deregistered'), image('ami-5', 'error')));
    const p = provider();
    const found = await p.describeImages({ tags: { 'kiln:fleet': 'web' } });
    expect(found.map((i) => `${i.id}:${i.state}:${i.region}`)).toEqual(['ami-1:available:eu-west-1', 'ami-2:pending:eu-west-1', 'ami-3:failed:eu-west-1', 'ami-4:failed:eu-west-1', 'ami-5:failed:eu-west-1']);
    await p.describeImages({ ids: ['ami-1', 'ami-9'] });
    const inputs = ec2.commandCalls(DescribeImagesCommand).map((c) => c.args[0].input);
    expect(inputs[0]).toMatchObject({ Owners: ['self'], Filters: [{ Name: 'tag:kiln:fleet', Values: ['web'] }] });
    expect(inputs[1]).toMatchObject({ Owners: ['self'], Filters: [{ Name: 'image-id', Values: ['ami-1', 'ami-9'] }] });
    expect(await p.describeImages({ ids: [] })).toEqual([]);
    expect(ec2.commandCalls(DescribeImagesCommand)).toHaveLength(2);
  });

  it('deleteImage deregisters the image, then deletes each of its snapshots', async () => {
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-1', 'available', { BlockDeviceMappings: [{ Ebs: { SnapshotId: 'snap-a' } }, { VirtualName: 'ephemeral0' }, { Ebs: { SnapshotId: 'snap-b' } }] })));
    await provider().deleteImage('ami-1');
    expect(sequence()).toEqual(['DescribeImages', 'DeregisterImage', 'DeleteSnapshot', 'DeleteSnapshot']);
    expect(ec2.commandCalls(DeregisterImageCommand)[0]!.args[0].input).toEqual({ ImageId: 'ami-1' });
    expect(ec2.commandCalls(DeleteSnapshotCommand).map((c) => c.args[0].input.SnapshotId)).toEqual(['snap-a', 'snap-b']);
  });

  it('deleteImage of an unknown image, or of one vanishing midway, is no error', async () => {
    ec2.on(DescribeImagesCommand).resolvesOnce(images());
    const p = provider();
    await p.deleteImage('ami-gone');
    expect(sequence()).toEqual(['DescribeImages']);

    ec2.on(DescribeImagesCommand).resolves(images(image('ami-1', 'available', { BlockDeviceMappings: [{ Ebs: { SnapshotId: 'snap-a' } }] })));
    ec2.on(DeregisterImageCommand).rejects(awsError('InvalidAMIID.NotFound'));
    ec2.on(DeleteSnapshotCommand).rejects(awsError('InvalidSnapshot.NotFound'));
    await p.deleteImage('ami-1');
  });

  it('deleteImage reports any other error as KILN_PROVIDER_FAILED naming the operation', async () => {
    ec2.on(DescribeImagesCommand).resolves(images(image('ami-1', 'available', { BlockDeviceMappings: [{ Ebs: { SnapshotId: 'snap-a' } }] })));
    ec2.on(DeleteSnapshotCommand).rejects(awsError('InvalidSnapshot.InUse', 'snap-a is in use by ami-2'));
    const err = await failure(provider().deleteImage('ami-1'));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toBe('ec2 DeleteSnapshot failed: InvalidSnapshot.InUse: snap-a is in use by ami-2');
  });

  it('terminate: one call for the batch; an unknown id in it is no error and the others still go', async () => {
    ec2.on(TerminateInstancesCommand, { InstanceIds: ['i-1', 'i-gone', 'i-2'] }).rejects(awsError('InvalidInstanceID.NotFound', "The instance ID 'i-gone' does not exist"));
    ec2.on(TerminateInstancesCommand, { InstanceIds: ['i-gone'] }).rejects(awsError('InvalidInstanceID.NotFound'));
    ec2.on(TerminateInstancesCommand, { InstanceIds: ['i-1'] }).resolves({});
    ec2.on(TerminateInstancesCommand, { InstanceIds: ['i-2'] }).resolves({});
    await provider().terminate(['i-1', 'i-gone', 'i-2']);
    const batches = ec2.commandCalls(TerminateInstancesCommand).map((c) => c.args[0].input.InstanceIds!.join(','));
    expect(batches[0]).toBe('i-1,i-gone,i-2');
    expect(batches.slice(1).sort()).toEqual(['i-1', 'i-2', 'i-gone']);
  });

  it('terminate reports any other error as KILN_PROVIDER_FAILED', async () => {
    ec2.on(TerminateInstancesCommand).rejects(awsError('OperationNotPermitted', 'termination protection is on'));
    const err = await failure(provider().terminate(['i-1']));
    expect(err.code).toBe('KILN_PROVIDER_FAILED');
    expect(err.message).toBe('ec2 TerminateInstances failed: OperationNotPermitted: termination protection is on');
  });
});

describe('ec2 user data script', () => {
  const BUNDLE = Buffer.from('#!/bin/sh\necho fake kiln-agent\n');
  const BUNDLE_SHA = createHash('sha256').update(BUNDLE).digest('hex');
  const SHIPPED_UNIT = readFileSync(new URL('../../packages/agent/units/kiln-agent.service', import.meta.url), 'utf8');

  interface FakeImds {
    url: string;
    bundleHits: number;
    instanceId: string;
    close(): Promise<void>;
  }

  /** IMDSv2 on loopback: a token from PUT, metadata only with it; also serves the bundle at /bundle. */
  async function fakeImds(): Promise<FakeImds> {
    const state = { bundleHits: 0, instanceId: 'i-0123456789abcdef0' };
    const server = createServer((req, res) => {
      if (req.method === 'PUT' && req.url === '/latest/api/token' && req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return res.end('tok-1');
      if (req.url === '/bundle') {
        state.bundleHits++;
        return res.end(BUNDLE);
      }
      if (req.headers['x-aws-ec2-metadata-token'] !== 'tok-1') return res.writeHead(401).end();
      if (req.url === '/latest/meta-data/instance-id') return res.end(state.instanceId);
      if (req.url === '/latest/meta-data/ami-id') return res.end('ami-0fedcba987654321');
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return Object.assign(state, { url: `http://127.0.0.1:${port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) });
  }

  const servers: FakeImds[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  /** Runs the script with KILN_ROOT a temp dir, KILN_IMDS the fake, and stand-ins for systemctl and aws that log their arguments. */
  async function runScript(script: string, setup?: (root: string) => Promise<void>) {
    const imds = await fakeImds();
    servers.push(imds);
    const root = await tempDir('kiln-userdata-');
    const bin = path.join(root, 'fake-bin');
    await mkdir(bin);
    await writeFile(path.join(bin, 'systemctl'), '#!/bin/sh\necho "$*" >> "$KILN_ROOT/systemctl.log"\n', { mode: 0o755 });
    await writeFile(path.join(bin, 'aws'), '#!/bin/sh\necho "$*" >> "$KILN_ROOT/aws.log"\ncp "$KILN_ROOT/bundle-src" "$5"\n', { mode: 0o755 });
    await writeFile(path.join(root, 'bundle-src'), BUNDLE);
    await setup?.(root);
    // spawned, not spawnSync: the fake IMDS answers from this very process
    const child = spawn('sh', ['-c', script], { env: { PATH: `${bin}:${process.env.PATH}`, KILN_ROOT: root, KILN_IMDS: imds.url }, timeout: 20_000 });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const status = await new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const readOr = (f: string) => readFile(path.join(root, f), 'utf8').catch(() => undefined);
    return { root, imds, status, stderr, systemctl: await readOr('systemctl.log'), aws: await readOr('aws.log') };
  }

  it.each([
    ['an empty agent config', { agent: {} }],
    ['a bundle with a presigned url', { agent: AGENT, agentBundle: { bucket: 'rel', key: 'agent/a.mjs', sha256: 'a'.repeat(64), url: "https://rel.s3/a.mjs?X-Amz-Signature=1&q='x'" } }],
    ['a bundle fetched with the AWS CLI', { agent: AGENT, agentBundle: { bucket: 'rel', key: "agent/it's.mjs", sha256: 'a'.repeat(64) } }],
  ])('parses with sh -n: %s', (_, boot) => {
    const r = spawnSync('sh', ['-n'], { input: renderUserData(boot), encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('writes agent.json (0600) with the IMDS identity, installs the bundle and its unit, enables and restarts the agent', async () => {
    const agent = { ...AGENT, note: "it's $HOME `id` \\ \"q\"\nKILN_AGENT_JSON\n$(touch /tmp/kiln-pwned)", instanceId: 'i-stale' };
    const script = renderUserData({ agent, agentBundle: { bucket: 'rel', key: 'agent/a.mjs', sha256: BUNDLE_SHA, url: 'PLACEHOLDER' } });
    const r = await runScript(script.replace("'PLACEHOLDER'", `"$KILN_IMDS/bundle"`));
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);

    const config = path.join(r.root, 'etc/kiln/agent.json');
    expect(JSON.parse(await readFile(config, 'utf8'))).toEqual({ ...agent, instanceId: 'i-0123456789abcdef0', imageId: 'ami-0fedcba987654321' });
    expect((await stat(config)).mode & 0o777).toBe(0o600);
    expect(await readdir(path.join(r.root, 'etc/kiln'))).toEqual(['agent.json']);
    const agentBin = path.join(r.root, 'usr/local/bin/kiln-agent');
    expect(await readFile(agentBin)).toEqual(BUNDLE);
    expect((await stat(agentBin)).mode & 0o777).toBe(0o755);
    expect(await readFile(path.join(r.root, 'etc/systemd/system/kiln-agent.service'), 'utf8')).toBe(SHIPPED_UNIT);
    expect(r.imds.bundleHits).toBe(1);
    expect(r.systemctl).toBe('daemon-reload\nenable kiln-agent.service\nrestart kiln-agent.service\n');
  });

  it('without a url fetches the bundle with the AWS CLI from s3://bucket/key', async () => {
    const r = await runScript(renderUserData({ agent: AGENT, agentBundle: { bucket: 'rel', key: 'agent/kiln agent.mjs', sha256: BUNDLE_SHA } }));
    expect(r.status).toBe(0);
    expect(r.aws).toMatch(/^s3 cp --only-show-errors s3:\/\/rel\/agent\/kiln agent\.mjs \S+\/usr\/local\/bin\/\.kiln-agent\.\d+\n$/);
    expect(await readFile(path.join(r.root, 'usr/local/bin/kiln-agent'))).toEqual(BUNDLE);
  });

  it('a bundle with the wrong sha256 is not installed and the agent is not started', async () => {
    const script = renderUserData({ agent: AGENT, agentBundle: { bucket: 'rel', key: 'k', sha256: 'b'.repeat(64), url: 'PLACEHOLDER' } });
    const r = await runScript(script.replace("'PLACEHOLDER'", `"$KILN_IMDS/bundle"`));
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('agent bundle sha256 mismatch');
    expect(await readdir(path.join(r.root, 'usr/local/bin'))).toEqual([]);
    expect(r.systemctl).toBeUndefined();
  });

  it('an image that has the agent fetches no bundle', async () => {
    const script = renderUserData({ agent: AGENT, agentBundle: { bucket: 'rel', key: 'k', sha256: BUNDLE_SHA, url: 'PLACEHOLDER' } });
    const r = await runScript(script.replace("'PLACEHOLDER'", `"$KILN_IMDS/bundle"`), async (root) => {
      await mkdir(path.join(root, 'usr/local/bin'), { recursive: true });
      await writeFile(path.join(root, 'usr/local/bin/kiln-agent'), 'baked', { mode: 0o755 });
    });
    expect(r.status).toBe(0);
    expect(r.imds.bundleHits).toBe(0);
    expect(await readFile(path.join(r.root, 'usr/local/bin/kiln-agent'), 'utf8')).toBe('baked');
    expect(r.systemctl).toContain('restart kiln-agent.service');
  });

  it('an instance id that is not i-<hex> is refused before it reaches the config', async () => {
    const r = await runScript(renderUserData({ agent: AGENT }), async () => {
      servers[0]!.instanceId = 'i-0abc","seal":true,"x":"';
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('unexpected id from IMDS');
    expect(existsSync(path.join(r.root, 'etc/kiln/agent.json'))).toBe(false);
    expect(r.systemctl).toBeUndefined();
  });

  it('refuses a bundle sha256 that is not 64 hex digits', () => {
    expect(() => renderUserData({ agent: AGENT, agentBundle: { bucket: 'b', key: 'k', sha256: '$(reboot)' } })).toThrow(
      expect.objectContaining({ code: 'KILN_PROVIDER_FAILED' }),
    );
  });
});
