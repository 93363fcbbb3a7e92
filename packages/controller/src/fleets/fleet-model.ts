import { AppName, BoundConfig, ChannelName, KilnError, ReleaseRef, Sha256, VersionName, formatZodError } from '@kiln/shared';
import { z } from 'zod';

export const fleetName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lower-case letters, digits and -, at most 63');

/**
 * What a fleet runs, as one: a release and the fleet config version bound to it (docs/config.md).
 * `config` null: none bound (a fleet without config, a record from before configs); instances keep
 * the config they run.
 */
export const TargetRef = ReleaseRef.extend({
  config: BoundConfig.nullable().default(null),
  /** the release's format (its manifest's `schema`): agents before 0.4.0 cannot install format 2; absent in records from before it was kept */
  format: z.union([z.literal(1), z.literal(2)]).optional(),
});
export type TargetRef = z.infer<typeof TargetRef>;

/** The same release with the same config. */
export const sameTarget = (a: Pick<TargetRef, 'manifestSha256' | 'config'>, b: Pick<TargetRef, 'manifestSha256' | 'config'>) =>
  a.manifestSha256 === b.manifestSha256 && (a.config?.sha256 ?? null) === (b.config?.sha256 ?? null);

/** "2.0.0", or "2.0.0 with config 3" when a config is bound to it. */
export const describeTarget = (t: { version: string; config?: { seq: number } | null }) => `${t.version}${t.config ? ` with config ${t.config.seq}` : ''}`;

/** Instances launched together from one image (`web-v003`): the unit bake and relaunch replace. */
export const Group = z.strictObject({
  name: z.string(),
  image: z.string(),
  /** the release the group went live with, and its config */
  release: TargetRef.nullable(),
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
  /** the release the fleet should run and the config it runs with, set by every successful deployment */
  desired: TargetRef.nullable(),
  /** earlier desired releases (with their config), newest last: `kiln rollback FLEET` goes to the one before `desired` */
  history: z.array(TargetRef.extend({ at: z.string() })).max(50),
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

/** A CloudWatch alarm name (AWS allows up to 255 printable characters). */
const AlarmName = z.string().min(1).max(255).regex(/^[\x20-\x7e]+$/, 'printable ASCII');

/**
 * The gates on top of the health gate (docs/balancers.md): a canary that pauses, a soak each batch
 * must stay healthy through, an error-rate limit read from the load balancer or CloudWatch alarms.
 */
export const GateFields = {
  /** hotfix: the first N instances; bake/relaunch: a group of N; then the deployment pauses until promoted */
  canary: z.number().int().min(1).max(100_000).nullable().default(null),
  /** promote by itself this long after pausing when nothing failed (null: wait for `promote`) */
  canaryWaitMs: z.number().int().min(0).max(7 * 86_400_000).nullable().default(null),
  /** each batch (the new group) must stay healthy this long before the next step */
  soakMs: z.number().int().min(0).max(86_400_000).default(0),
  /** the new targets' 5xx share over the soak may exceed the old ones' by at most this (0.05: five points) */
  maxErrorRate: z.number().min(0).max(1).nullable().default(null),
  /** CloudWatch alarms that must not fire during the soak (ELBv2 fleets) */
  alarms: z.array(AlarmName).max(10).default([]),
};

export const DeploymentCreate = z
  .strictObject({
    fleet: fleetName,
    /** the release; without it (and with `config`), the fleet's desired one */
    version: VersionName.optional(),
    /** deploy the fleet's latest config version (every deployment of a release carries it too) */
    config: z.boolean().default(false),
    strategy: Strategy.default('hotfix'),
    batch: BatchSpec.default({ percent: 25 }),
    maxFailures: z.number().int().min(0).default(0),
    /** absent: 30 s, or what the release's own health checks and hooks take when that is longer */
    healthTimeoutMs: z.number().int().min(100).max(3_600_000).optional(),
    ...GateFields,
  })
  .refine((d) => d.version !== undefined || d.config, { message: 'name the release to deploy, or config: true to deploy the fleet\'s latest config with its desired release', path: ['version'] })
  .refine((d) => d.canaryWaitMs === null || d.canary !== null, { message: 'canaryWaitMs needs canary', path: ['canaryWaitMs'] })
  .refine((d) => (d.maxErrorRate === null && d.alarms.length === 0) || d.soakMs > 0, { message: 'maxErrorRate and alarms are read over the soak window: give soakMs too', path: ['soakMs'] });
export type DeploymentCreate = z.infer<typeof DeploymentCreate>;

/** A rollback: to the previous release, or to `version` (an older one) when given. */
export const RollbackCreate = z.strictObject({
  batch: BatchSpec.default({ percent: 25 }),
  maxFailures: z.number().int().min(0).default(0),
  healthTimeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
  version: VersionName.optional(),
});

export const InstanceStep = z.enum(['pending', 'sent', 'healthy', 'failed', 'rolled-back', 'rollback-failed', 'unreachable']);

const Counts = z.strictObject({ requests: z.number().int().min(0), errors5xx: z.number().int().min(0) });

/** One soak: how long, what the balancer counted for the new and the old targets, the alarms that fired. */
export const SoakResult = z.strictObject({
  /** the batch (hotfix) or 0 (the new group) */
  batch: z.number().int(),
  instances: z.array(z.string()),
  ms: z.number().int().min(0),
  /** requests and 5xx the balancer counted during the soak; null: the balancer keeps no counters (ELBv2) */
  newTargets: Counts.nullable(),
  oldTargets: Counts.nullable(),
  alarms: z.array(z.string()),
  passed: z.boolean(),
  reason: z.string().nullable(),
});
export type SoakResult = z.infer<typeof SoakResult>;

/** One instance in a deployment: its step and, once its agent installed the release, what the install fetched. */
export const DeploymentInstance = z.strictObject({
  step: InstanceStep,
  batch: z.number().int(),
  error: z.strictObject({ code: z.string(), message: z.string() }).optional(),
  /** bytes its install read from the bucket, of what a download of the whole release reads (hotfix; agents from 0.4.0 on) */
  fetchedBytes: z.number().int().min(0).optional(),
  releaseBytes: z.number().int().min(0).optional(),
  at: z.string(),
});
export type DeploymentInstance = z.infer<typeof DeploymentInstance>;

export const Deployment = z.strictObject({
  id: z.string(),
  fleet: fleetName,
  app: AppName,
  channel: ChannelName,
  strategy: Strategy,
  /** `deploy`; `rollback` (the previous good release, or the standby group brought back); `heal` (drifted instances replaced) */
  kind: z.enum(['deploy', 'rollback', 'heal']),
  /** the release and the config version it deploys */
  release: TargetRef,
  /** what the fleet ran before (the pointer this deployment replaced), restored if it fails; null: the same as `release`, or nothing */
  previous: TargetRef.nullable(),
  /** the release and config were the fleet's desired ones already: only instances that differ from them change */
  unchanged: z.boolean().default(false),
  batch: BatchSpec,
  maxFailures: z.number().int().min(0),
  healthTimeoutMs: z.number().int(),
  /** a controller restarted mid-rollout resumes it: `running` and `paused` records are picked up at start */
  state: z.enum(['running', 'paused', 'succeeded', 'failed', 'cancelled']),
  verdict: z.string().nullable(),
  error: z.strictObject({ code: z.string(), message: z.string() }).nullable(),
  batches: z.array(z.array(z.string())),
  instances: z.record(z.string(), DeploymentInstance),
  cancelRequested: z.boolean(),
  /** bake and relaunch: the group launched, the image it came from, each phase's wall time */
  group: z.string().nullable().default(null),
  image: z.string().nullable().default(null),
  phases: z.array(z.strictObject({ name: z.string(), ms: z.number() })).default([]),
  ...GateFields,
  /** the balancer the swaps drained through (its endpoint), null: none (not drained) */
  balancer: z.string().nullable().default(null),
  /** when the canary paused it (null: not paused); set by `promote` and `abort` */
  pausedAt: z.string().nullable().default(null),
  promoteRequested: z.boolean().default(false),
  abortRequested: z.boolean().default(false),
  /** each soak and what it saw */
  soaks: z.array(SoakResult).default([]),
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
