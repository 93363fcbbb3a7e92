/**
 * Where instances and images come from. Bakes, relaunches, heals and fleet rollbacks use only
 * this interface, so the `process` (local), `nspawn` (local, real systemd) and `ec2` providers
 * behave alike. Every call takes explicit deadlines; none waits forever.
 */

/** Tags on every resource kiln creates: `kiln:fleet`, `kiln:group`, `kiln:release`, `kiln:bake-id`, … */
export type Tags = Record<string, string>;

export type InstanceState = 'pending' | 'running' | 'stopping' | 'stopped' | 'terminated';

export interface InstanceInfo {
  id: string;
  imageId: string;
  state: InstanceState;
  tags: Tags;
  /** where the app answers, when the provider knows (`http://127.0.0.1:PORT` locally, the private IP on EC2) */
  address?: string;
  launchedAt: string;
}

export type ImageState = 'pending' | 'available' | 'failed';

export interface ImageInfo {
  id: string;
  name: string;
  state: ImageState;
  /** the region it lives in, for providers that have regions */
  region?: string;
  tags: Tags;
  createdAt: string;
}

/**
 * What an instance needs to configure itself at boot: the agent's config without its identity
 * (the provider gives each instance its own id and the image id), and, for a base image without
 * an agent, where the agent bundle lies in the bucket.
 */
export interface BootData {
  /** the agent config (agent.json) minus `instanceId` and `imageId` */
  agent: Record<string, unknown>;
  /**
   * `s3://bucket/key` of the agent bundle (`kiln agent publish`), installed at boot when the image has no agent.
   * `url`: a presigned HTTPS GET URL of the same object, so that an instance fetches it with curl alone
   * (no AWS CLI, no S3 rights on its instance profile); without it the instance needs the AWS CLI.
   */
  agentBundle?: { bucket: string; key: string; sha256: string; url?: string };
}

export interface LaunchSpec {
  imageId: string;
  count: number;
  tags: Tags;
  boot: BootData;
}

export interface WaitOptions {
  /** give up after this long with KILN_PROVIDER_TIMEOUT; every wait has one */
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface Provider {
  readonly name: 'process' | 'nspawn' | 'ec2';
  /** Launches `count` instances, tagged, with the boot data; resolves once they exist (not yet running). */
  launch(spec: LaunchSpec): Promise<InstanceInfo[]>;
  /** Resolves when every instance is running; KILN_PROVIDER_TIMEOUT past the deadline. */
  waitRunning(ids: string[], opts: WaitOptions): Promise<InstanceInfo[]>;
  /** Stops instances and waits until they are stopped (their disks stay). */
  stop(ids: string[], opts: WaitOptions): Promise<void>;
  /** Starts stopped instances again and waits until they run (a fleet rollback brings its old group back). */
  start(ids: string[], opts: WaitOptions): Promise<void>;
  /** Terminates instances (gone for good). Unknown or already terminated ids are no error. */
  terminate(ids: string[]): Promise<void>;
  /** Creates an image from a stopped instance and waits until it is available. */
  createImage(instanceId: string, spec: { name: string; tags: Tags }, opts: WaitOptions): Promise<ImageInfo>;
  /** Copies an image to other regions in parallel, tagged like the source; resolves when all are available. */
  copyImage(imageId: string, regions: string[], opts: WaitOptions): Promise<ImageInfo[]>;
  /** Instances carrying every given tag (terminated ones left out). */
  describeInstances(tags: Tags): Promise<InstanceInfo[]>;
  /** Images carrying every given tag, or with the given ids. */
  describeImages(query: { tags?: Tags; ids?: string[] }): Promise<ImageInfo[]>;
  /** Deletes an image and its storage (EC2: deregister *and* delete its snapshots). Unknown ids are no error. */
  deleteImage(imageId: string): Promise<void>;
  /** The image a fleet created without one launches from (the process provider's plain base), if the provider has one. */
  defaultImage?(): Promise<ImageInfo>;
}

export const TAG = {
  fleet: 'kiln:fleet',
  group: 'kiln:group',
  release: 'kiln:release',
  bakeId: 'kiln:bake-id',
  role: 'kiln:role',
  app: 'kiln:app',
  version: 'kiln:version',
  seq: 'kiln:seq',
  artifactSha256: 'kiln:artifact-sha256',
  baseImage: 'kiln:base-image',
  bakeKey: 'kiln:bake-key',
  deployment: 'kiln:deployment',
} as const;
