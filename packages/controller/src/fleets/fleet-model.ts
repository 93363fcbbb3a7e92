import { AppName, ChannelName, KilnError, ReleaseRef, Sha256, VersionName, formatZodError } from '@kiln/shared';
import { z } from 'zod';

export const fleetName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lower-case letters, digits and -, at most 63');

/** Instances launched together from one image (`web-v003`): the unit bake and relaunch replace. */
export const Group = z.strictObject({
  name: z.string(),
  image: z.string(),
  /** the release the group went live with */
  release: ReleaseRef.nullable(),
  instances: z.array(z.string()),
  /** live: serving; standby: stopped, kept for `kiln rollback`; launching: on its way (not live yet) */
  state: z.enum(['launching', 'live', 'standby']),
  createdAt: z.string(),
});
export type Group = z.infer<typeof Group>;

/** A fleet: the instances of one app following one channel. Kept in the bucket; its agent credential only as a digest. */
export const Fleet = z.strictObject({
  name: fleetName,
  app: AppName,
  channel: ChannelName,
  provider: z.enum(['none', 'process', 'nspawn', 'ec2']),
  image: z.string().max(256).nullable(),
  size: z.number().int().min(0).max(100_000),
  /** the release the fleet should run, set by every successful deployment */
  desired: ReleaseRef.nullable(),
  /** earlier desired releases, newest last: `kiln rollback FLEET` goes to the one before `desired` */
  history: z.array(ReleaseRef.extend({ at: z.string() })).max(50),
  agentCredentialSha256: Sha256,
  /** with the controller's agent secret, derives the agent credential its launches give instances */
  credentialSalt: z.string().max(64).optional(),
  /** ec2: the ELBv2 target group a live group is registered in (with connection draining when it retires) */
  targetGroup: z.string().max(2048).nullable().default(null),
  /** groups on a provider, oldest first */
  groups: z.array(Group).default([]),
  /** the number of the last group (`web-v003` is 3) */
  groupSeq: z.number().int().min(0).default(0),
  createdAt: z.string(),
});
export type Fleet = z.infer<typeof Fleet>;

export const FleetCreate = z
  .strictObject({
    name: fleetName,
    app: AppName,
    channel: ChannelName.optional(),
    provider: z.enum(['none', 'process', 'nspawn', 'ec2']).default('none'),
    image: z.string().max(256).nullable().default(null),
    size: z.number().int().min(0).max(100_000).default(0),
    targetGroup: z.string().max(2048).nullable().default(null),
  })
  // The fleet's own name by default: a channel shared by two fleets moves both (a deployment of one
  // points the channel the other's instances boot from), so each fleet gets its own unless told.
  .transform((f) => ({ ...f, channel: f.channel ?? f.name }));

/** `PATCH /v1/fleets/:name`: what may change on a fleet; at least one field. */
export const FleetUpdate = z
  .strictObject({
    channel: ChannelName.optional(),
    image: z.string().min(1).max(256).optional(),
    size: z.number().int().min(0).max(100_000).optional(),
    /** null: no target group any more */
    targetGroup: z.string().max(2048).nullable().optional(),
  })
  .refine((u) => Object.keys(u).length > 0, 'name at least one of channel, image, size, targetGroup');
export type FleetUpdate = z.infer<typeof FleetUpdate>;

export const Strategy = z.enum(['hotfix', 'relaunch', 'bake']);
export type Strategy = z.infer<typeof Strategy>;

/** "25%" or "10": the share or number of the fleet's instances per batch. */
export const BatchSpec = z.union([
  z.strictObject({ percent: z.number().min(1).max(100) }),
  z.strictObject({ count: z.number().int().min(1) }),
]);
export type BatchSpec = z.infer<typeof BatchSpec>;

export const DeploymentCreate = z.strictObject({
  fleet: fleetName,
  version: VersionName,
  strategy: Strategy.default('hotfix'),
  batch: BatchSpec.default({ percent: 25 }),
  maxFailures: z.number().int().min(0).default(0),
  healthTimeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
});
export type DeploymentCreate = z.infer<typeof DeploymentCreate>;

/** A rollback: to the previous release, or to `version` (an older one) when given. */
export const RollbackCreate = DeploymentCreate.omit({ fleet: true, version: true, strategy: true }).extend({ version: VersionName.optional() });

export const InstanceStep = z.enum(['pending', 'sent', 'healthy', 'failed', 'rolled-back', 'rollback-failed', 'unreachable']);

export const Deployment = z.strictObject({
  id: z.string(),
  fleet: fleetName,
  app: AppName,
  channel: ChannelName,
  strategy: Strategy,
  /** `deploy`; `rollback` (the previous good release, or the standby group brought back); `heal` (drifted instances replaced) */
  kind: z.enum(['deploy', 'rollback', 'heal']),
  release: ReleaseRef,
  /** the pointer this deployment replaced, restored if it fails */
  previous: ReleaseRef.nullable(),
  batch: BatchSpec,
  maxFailures: z.number().int().min(0),
  healthTimeoutMs: z.number().int(),
  /** a controller restarted mid-rollout resumes it: `running` records are picked up at start */
  state: z.enum(['running', 'succeeded', 'failed', 'cancelled']),
  verdict: z.string().nullable(),
  error: z.strictObject({ code: z.string(), message: z.string() }).nullable(),
  batches: z.array(z.array(z.string())),
  instances: z.record(z.string(), z.strictObject({ step: InstanceStep, batch: z.number().int(), error: z.strictObject({ code: z.string(), message: z.string() }).optional(), at: z.string() })),
  cancelRequested: z.boolean(),
  /** bake and relaunch: the group launched, the image it came from, each phase's wall time */
  group: z.string().nullable().default(null),
  image: z.string().nullable().default(null),
  phases: z.array(z.strictObject({ name: z.string(), ms: z.number() })).default([]),
  createdAt: z.string(),
  updatedAt: z.string(),
  finishedAt: z.string().nullable(),
});
export type Deployment = z.infer<typeof Deployment>;

/** Parses a request body or query: a 400 that names the field. */
export function parseInput<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value ?? {});
  if (!parsed.success) throw new KilnError('KILN_REQUEST_INVALID', `${what} is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}
