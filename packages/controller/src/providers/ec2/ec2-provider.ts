import { randomUUID } from 'node:crypto';
import type { EC2Client, _InstanceType } from '@aws-sdk/client-ec2';
import { KilnError, type Logger } from '@kiln/shared';
import { ec2Call, errorName, toEc2Tags, type Ec2Context } from './ec2-calls.js';
import { ec2Sdk } from './ec2-sdk.js';
import { copyImageTo, createImageFrom, deleteImageIn, describeImagesIn } from './ec2-images.js';
import { describeInstancesIn, startInstances, stopInstances, terminateInstances, toInstanceInfo, waitInstances } from './ec2-instances.js';
import { renderUserData } from './ec2-user-data.js';
import type { InstanceInfo, LaunchSpec, Provider } from '../provider.js';

export { renderUserData, USER_DATA_MAX_BYTES, type UserDataOptions } from './ec2-user-data.js';

export interface Ec2ProviderOptions {
  region: string;
  /** the home region's client; default: one made for `region` with the SDK's credential chain */
  client?: EC2Client;
  log: Logger;
  subnetId?: string;
  securityGroupIds?: string[];
  /** default t3.micro */
  instanceType?: string;
  /** name or ARN of the instance profile the instances run with */
  iamInstanceProfile?: string;
  keyName?: string;
  /** the client for another region (copyImage); default: one made per region, kept for reuse */
  regionsClient?: (region: string) => EC2Client;
  /** clock for deadlines; default Date.now */
  now?: () => number;
  /** how often a wait polls Describe*; default 5 s */
  pollMs?: number;
}

const IMAGE_MISSING = ['InvalidAMIID.NotFound', 'InvalidAMIID.Malformed'];

/** The `ec2` provider: instances and AMIs through the EC2 API, every wait bounded by its caller's deadline (target groups: balancers/elbv2-balancer.ts). */
export function createEc2Provider(opts: Ec2ProviderOptions): Provider {
  const log = opts.log.child({ module: 'provider-ec2' });
  const now = opts.now ?? Date.now;
  const pollMs = opts.pollMs ?? 5_000;
  const contextFor = (region: string, client: EC2Client): Ec2Context => ({ client, region, log: log.child({ region }), now, pollMs });
  const home = contextFor(opts.region, opts.client ?? new (ec2Sdk().EC2Client)({ region: opts.region }));
  const regions = new Map<string, Ec2Context>([[opts.region, home]]);
  const ctxFor = (region: string): Ec2Context => {
    let ctx = regions.get(region);
    if (!ctx) {
      ctx = contextFor(region, opts.regionsClient ? opts.regionsClient(region) : new (ec2Sdk().EC2Client)({ region }));
      regions.set(region, ctx);
    }
    return ctx;
  };

  async function launch(spec: LaunchSpec): Promise<InstanceInfo[]> {
    const userData = renderUserData(spec.boot);
    const tags = toEc2Tags(spec.tags);
    const profile = opts.iamInstanceProfile;
    const input = {
      ImageId: spec.imageId,
      MinCount: spec.count,
      MaxCount: spec.count,
      InstanceType: (opts.instanceType ?? 't3.micro') as _InstanceType,
      UserData: Buffer.from(userData).toString('base64'),
      TagSpecifications: [
        { ResourceType: 'instance' as const, Tags: tags },
        { ResourceType: 'volume' as const, Tags: tags },
      ],
      // the user data speaks IMDSv2 only; v1 is the SSRF-prone one
      MetadataOptions: { HttpTokens: 'required' as const, HttpEndpoint: 'enabled' as const },
      // makes the SDK's own retries of this call idempotent: a retry never launches twice
      ClientToken: randomUUID(),
      ...(opts.subnetId ? { SubnetId: opts.subnetId } : {}),
      ...(opts.securityGroupIds ? { SecurityGroupIds: opts.securityGroupIds } : {}),
      ...(opts.keyName ? { KeyName: opts.keyName } : {}),
      ...(profile ? { IamInstanceProfile: profile.startsWith('arn:') ? { Arn: profile } : { Name: profile } } : {}),
    };
    const out = await ec2Call('RunInstances', () => home.client.send(new (ec2Sdk().RunInstancesCommand)(input))).catch((err: unknown) => {
      if (err instanceof KilnError && IMAGE_MISSING.includes(errorName(err.cause))) {
        throw new KilnError('KILN_IMAGE_NOT_FOUND', `ec2 image ${spec.imageId} does not exist in ${opts.region}: ${err.message}`, { cause: err.cause });
      }
      throw err;
    });
    const instances = (out.Instances ?? []).map(toInstanceInfo);
    home.log.info({ imageId: spec.imageId, instanceIds: instances.map((i) => i.id) }, 'launched instances');
    return instances;
  }

  return {
    name: 'ec2',
    launch,
    waitRunning: (ids, w) => (ids.length === 0 ? Promise.resolve([]) : waitInstances(home, ids, 'running', now() + w.timeoutMs, w)),
    stop: (ids, w) => stopInstances(home, ids, now() + w.timeoutMs, w),
    start: (ids, w) => startInstances(home, ids, now() + w.timeoutMs, w),
    terminate: (ids) => terminateInstances(home, ids),
    createImage: (instanceId, spec, w) => createImageFrom(home, instanceId, spec, w),
    copyImage: (imageId, to, w) => copyImageTo(home, ctxFor, imageId, to, w),
    describeInstances: (tags) => describeInstancesIn(home, { tags, live: true }),
    describeImages: (query) => describeImagesIn(home, query),
    deleteImage: (imageId) => deleteImageIn(home, imageId),
  };
}
