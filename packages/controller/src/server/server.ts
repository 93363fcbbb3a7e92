import type { S3Client } from '@aws-sdk/client-s3';
import { AGENT_VERSION, KilnError, createConfigStore, createDocStore, createReleaseStore, type Logger, type PrivateKey, type PublicKey, type S3Location } from '@kiln/shared';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { createAgentHub, type AgentHub } from '../fleets/agent-hub.js';
import { createDeployments, inFlight, type Deployments } from '../rollouts/deployments.js';
import { readPublishedAgent } from '../providers/agent-bundle.js';
import { bakeImage, type BakeTimeouts } from '../bakes/bake.js';
import { createBakes, type Bakes } from '../bakes/bakes.js';
import { createFleetRegistry, type FleetRegistry } from '../fleets/fleet-registry.js';
import type { InstanceLimits } from '../fleets/instance-admission.js';
import { createInstanceRecords } from '../fleets/instance-records.js';
import { forgetTerminated } from '../fleets/forget-terminated.js';
import type { Fleet } from '../fleets/fleet-model.js';
import { bakeBase } from '../rollouts/group-rollout.js';
import type { BootData, Provider } from '../providers/provider.js';
import type { Balancer, BalancerSource } from '../balancers/balancer.js';
import { restoreTraffic } from '../rollouts/fleet-traffic.js';
import { createRolloutWaiter } from '../fleets/rollout-wait.js';
import { providerRoutes } from './routes/provider.js';
import { identify, requireOperator } from './http-auth.js';
import { BODY_LIMIT, MAX_PARAM_LENGTH, frameworkErrors, installErrorHandler } from './http-errors.js';
import { deploymentRoutes } from './routes/deployments.js';
import { fleetRoutes } from './routes/fleets.js';
import { logRoutes } from './routes/logs.js';
import { fleetConfigRoutes } from './routes/fleet-config.js';
import { createFleetConfigs } from '../fleets/fleet-config.js';
import { releaseRoutes } from './routes/releases.js';

export interface ServerOptions {
  log: Logger;
  s3: S3Client;
  bucket: string;
  prefix?: string;
  /** operator credentials (bearer tokens) */
  operatorTokens: string[];
  /** signs the channel pointers deployments move, and fleets' config versions */
  signingKey?: PrivateKey;
  trustedKeys: PublicKey[];
  /** TLS: PEM certificate and key */
  https?: { cert: string | Buffer; key: string | Buffer };
  heartbeatMs?: number;
  /**
   * What holders of a fleet's agent credential may do (docs/protocol.md): instances outside the
   * fleet's groups at most max(capFactor × size, size + capExtra) (default 2 and 10), records of
   * those away for expireAfterMs dropped (default 24 h), a hello within helloTimeoutMs (default 10 s)
   */
  instances?: Partial<InstanceLimits>;
  /** how long a pointer a deployment writes stays valid (default 30 days) */
  pointerTtlMs?: number;
  now?: () => Date;
  /** bake, relaunch, heal: the provider fleets launch on and what their instances boot with */
  launch?: LaunchOptions;
  /** load balancers (docs/balancers.md): every swap of a fleet behind one is drained */
  balancers?: BalancerSource;
  /** how long in-flight requests get to end when an instance is drained (default 30 s) */
  drainMs?: number;
}

export interface LaunchOptions {
  provider: Provider;
  /** derives each fleet's agent credential for the instances it launches; keep it across restarts */
  agentSecret: Buffer;
  /** where launched agents reach the bucket */
  s3: S3Location;
  /** what launched agents connect to (default: this server's own address once listening) */
  agentsUrl?: string;
  serviceManager?: 'process' | 'systemd';
  /** more agent config for launched instances (heartbeatMs, treeCheckIntervalMs, …) */
  agentSettings?: Record<string, unknown>;
  bakeTimeouts?: Partial<BakeTimeouts>;
  /** how long launched instances get to be running (default 2 min) */
  launchTimeoutMs?: number;
}

export type KilnServer = FastifyInstance & {
  kiln: {
    hub: AgentHub;
    fleets: FleetRegistry;
    deployments: Deployments;
    bakes?: Bakes;
    /** puts the running instances of every fleet's live group in its local balancer (after a restart of either) */
    restoreTraffic(): Promise<void>;
  };
};

export const AGENTS_PATH = '/v1/agents';

/**
 * The controller: the operator API (docs/api.md) and the agents' WebSocket endpoint on one server.
 * Not listening yet; `listen` it (tests use `inject` or a port of their own). State lives in the
 * bucket: fleets and deployment records; instances are what connected agents report.
 */
export async function buildServer(opts: ServerOptions): Promise<KilnServer> {
  const now = opts.now ?? (() => new Date());
  const log = opts.log.child({ module: 'controller' });
  const docs = createDocStore(opts.s3, opts.bucket, opts.prefix ?? '');
  const store = createReleaseStore(opts.s3, opts.bucket, opts.prefix ?? '');
  // Fleets' config versions, signed with the same key as the channel pointers (docs/config.md).
  const configs = createFleetConfigs({ store: createConfigStore(opts.s3, opts.bucket, opts.prefix ?? ''), ...(opts.signingKey ? { signingKey: opts.signingKey } : {}), trustedKeys: opts.trustedKeys, log, now });
  // Terminated instances leave the hub too (the hub is made below; terminate runs only later).
  const launch = opts.launch && { ...opts.launch, provider: forgetTerminated(opts.launch.provider, () => hub) };
  const fleets = createFleetRegistry({ docs, log, now, ...(launch ? { agentSecret: launch.agentSecret } : {}) });
  await fleets.load();
  const records = createInstanceRecords({ docs, log, now });
  await records.load();
  const hub = createAgentHub({
    log,
    now,
    records,
    // The fleet as it is at each hello (its size and groups may have changed since the connection began).
    fleet: (name) => fleets.list().find((f) => f.name === name),
    ...(opts.instances ? { limits: opts.instances } : {}),
    ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
    auth(token) {
      const fleet = fleets.byAgentCredential(token);
      if (fleet) return { fleet };
      return { refuse: identify(token, opts.operatorTokens, fleets) === 'operator' ? 'KILN_FORBIDDEN' : 'KILN_UNAUTHORIZED' };
    },
  });
  let agentsUrl = launch?.agentsUrl;
  /** What an instance boots with: its fleet's channel and credential, the bucket, the pinned keys. */
  // A base image without the agent installs the one `kiln agent publish` put in the bucket (the local providers' images have it).
  const bootData = async (app: string, channel: string, credential: string, extra: Record<string, unknown> = {}): Promise<BootData> => {
    if (!agentsUrl) throw new KilnError('KILN_PROVIDER_FAILED', 'the controller is not listening yet: launched agents would have nowhere to connect');
    const published = launch!.provider.name === 'ec2' ? await readPublishedAgent({ s3: opts.s3, bucket: opts.bucket, ...(opts.prefix ? { prefix: opts.prefix } : {}) }) : null;
    return {
      ...(published ? { agentBundle: { bucket: opts.bucket, key: published.key, sha256: published.sha256 } } : {}),
      agent: {
        app,
        channel,
        s3: launch!.s3,
        controller: { url: agentsUrl, credential },
        keys: opts.trustedKeys.map((k) => k.key.export({ type: 'spki', format: 'pem' }).toString()),
        serviceManager: launch!.serviceManager ?? 'process',
        ...launch!.agentSettings,
        ...extra,
      },
    };
  };
  const bakeFor = async (app: string, version: string, baseImage: string, regions: string[], tags: Record<string, string>, onPhase: (name: string, ms: number) => void) => {
    if (!opts.signingKey) throw new KilnError('KILN_KEY_INVALID', 'the controller has no release signing key to point a builder at the release with; start it with one (`kiln keys generate`)');
    return bakeImage({
      provider: launch!.provider,
      store,
      waiter,
      signingKey: opts.signingKey,
      trustedKeys: opts.trustedKeys,
      app,
      version,
      baseImage,
      regions,
      tags,
      agentVersion: AGENT_VERSION,
      builderBoot: (channel) => bootData(app, channel, fleets.builderCredential(app), { seal: true }),
      ...(launch!.bakeTimeouts ? { timeouts: launch!.bakeTimeouts } : {}),
      log,
      onPhase,
    });
  };
  const waiter = createRolloutWaiter(hub);
  const local = (f: Fleet) => f.provider === 'process' || f.provider === 'nspawn';
  /** The fleet's balancer: its target group, or the local HAProxy backend; undefined: it has none (not drained). */
  const balancerFor = (f: Fleet): Balancer | undefined => {
    if (f.targetGroup) {
      if (!opts.balancers?.targetGroup) throw new KilnError('KILN_BALANCER_FAILED', `fleet ${f.name} names the target group ${f.targetGroup}, but this controller has no ELBv2 client to drive it (buildServer's balancers.targetGroup)`);
      return opts.balancers.targetGroup(f.targetGroup);
    }
    return local(f) ? opts.balancers?.local?.balancer(f.name) : undefined;
  };
  /** HAProxy gets a frontend for each local fleet, and loses the frontends of deleted ones. */
  const fleetsChanged = async () => opts.balancers?.local?.setFleets(fleets.list().filter(local).map((f) => f.name));
  /** The local balancer holds each fleet's live group, but not the instances a rollout in flight took out. */
  const restore = async () => {
    // Nothing to restore without a local balancer (ELBv2 keeps its targets): no records read at start for it.
    if (!opts.balancers?.local) return;
    const busy = new Set((await deployments.list()).filter(inFlight).flatMap((d) => Object.entries(d.instances).filter(([, i]) => i.step === 'sent' || i.step === 'failed').map(([id]) => id)));
    await restoreTraffic({ fleets: fleets.list().filter((f) => local(f) && !f.targetGroup), balancerFor, ...(launch ? { provider: launch.provider } : {}), busy, log, healthyMs: 10_000 });
  };
  const deployments = createDeployments({
    docs,
    hub,
    fleets,
    store,
    configs,
    ...(opts.signingKey ? { signingKey: opts.signingKey } : {}),
    trustedKeys: opts.trustedKeys,
    log,
    now,
    pointerTtlMs: opts.pointerTtlMs ?? 30 * 86_400_000,
    balancerFor,
    ...(opts.balancers?.alarms ? { alarmWatch: opts.balancers.alarms } : {}),
    ...(opts.drainMs !== undefined ? { drainMs: opts.drainMs } : {}),
    ...(launch
      ? {
          groups: {
            provider: launch.provider,
            launchTimeoutMs: launch.launchTimeoutMs ?? 120_000,
            boot: (f: Fleet) => bootData(f.app, f.channel, fleets.agentCredential(f.name)),
            bake: async (f: Fleet, version: string, tags: Record<string, string>, onPhase: (name: string, ms: number) => void) => bakeFor(f.app, version, await bakeBase(launch.provider, f), [], { 'kiln:fleet': f.name, ...tags }, onPhase),
          },
        }
      : {}),
  });
  const bakes = launch ? createBakes({ docs, provider: launch.provider, store, log, now, bake: (b, tags, onPhase) => bakeFor(b.app, b.version, b.baseImage, b.regions, tags, onPhase) }) : undefined;

  const app = Fastify({
    loggerInstance: log,
    // Requests are not logged one by one: agents and the CLI poll; errors are logged where they happen.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // The router's own refusals (a parameter too long, a URL that does not decode) in kiln's error shape.
    frameworkErrors,
    ...(opts.https ? { https: opts.https } : {}),
  }) as unknown as KilnServer;
  app.decorate('kiln', { hub, fleets, deployments, ...(bakes ? { bakes } : {}), restoreTraffic: restore });
  installErrorHandler(app);
  app.server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url ?? '/', 'http://x').pathname !== AGENTS_PATH) return socket.destroy();
    hub.handleUpgrade(req, socket, head);
  });
  app.get('/v1/health', async () => ({ ok: true }));
  await app.register(async (api) => {
    requireOperator(api, opts.operatorTokens, fleets);
    await api.register(fleetRoutes, { fleets, hub, deployments, balancerFor, fleetsChanged, ...(launch ? { provider: launch.provider } : {}) });
    await api.register(deploymentRoutes, { deployments });
    await api.register(logRoutes, { fleets, hub, log });
    await api.register(fleetConfigRoutes, { fleets, configs });
    await api.register(releaseRoutes, { store, keys: opts.trustedKeys });
    if (launch && bakes) await api.register(providerRoutes, { provider: launch.provider, bakes, deployments, fleets });
  });
  app.addHook('onListen', async () => {
    const address = app.server.address();
    if (!agentsUrl && address && typeof address === 'object') agentsUrl = `${opts.https ? 'wss' : 'ws'}://127.0.0.1:${address.port}${AGENTS_PATH}`;
    await bakes?.resume();
    // The balancer knows every fleet and serves the live groups before a resumed rollout drains anything.
    await fleetsChanged();
    await restore();
    await deployments.resume();
  });
  // Before the HTTP server closes: it waits for every socket, and the agents' sockets end only here.
  app.addHook('preClose', async () => {
    deployments.close();
    bakes?.close();
    waiter.close();
    await deployments.idle();
    await bakes?.idle();
    await hub.close();
  });
  return app;
}

