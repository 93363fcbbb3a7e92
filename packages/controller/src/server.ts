import type { S3Client } from '@aws-sdk/client-s3';
import { createDocStore, createReleaseStore, type Logger, type PrivateKey, type PublicKey } from '@kiln/shared';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { createAgentHub, type AgentHub } from './agent-hub.js';
import { createDeployments, type Deployments } from './deployments.js';
import { createFleetRegistry, type FleetRegistry } from './fleet-registry.js';
import { identify, requireOperator } from './http-auth.js';
import { installErrorHandler } from './http-errors.js';
import { deploymentRoutes } from './routes-deployments.js';
import { fleetRoutes } from './routes-fleets.js';
import { releaseRoutes } from './routes-releases.js';

export interface ServerOptions {
  log: Logger;
  s3: S3Client;
  bucket: string;
  prefix?: string;
  /** operator credentials (bearer tokens) */
  operatorTokens: string[];
  /** signs the channel pointers deployments move */
  signingKey?: PrivateKey;
  trustedKeys: PublicKey[];
  /** TLS: PEM certificate and key */
  https?: { cert: string | Buffer; key: string | Buffer };
  heartbeatMs?: number;
  /** how long a pointer a deployment writes stays valid (default 30 days) */
  pointerTtlMs?: number;
  now?: () => Date;
}

export type KilnServer = FastifyInstance & { kiln: { hub: AgentHub; fleets: FleetRegistry; deployments: Deployments } };

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
  const fleets = createFleetRegistry({ docs, log, now });
  await fleets.load();
  const hub = createAgentHub({
    log,
    now,
    ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
    auth(token) {
      const fleet = fleets.byAgentCredential(token);
      if (fleet) return { fleet };
      return { refuse: identify(token, opts.operatorTokens, fleets) === 'operator' ? 'KILN_FORBIDDEN' : 'KILN_UNAUTHORIZED' };
    },
  });
  const deployments = createDeployments({ docs, hub, fleets, store, ...(opts.signingKey ? { signingKey: opts.signingKey } : {}), trustedKeys: opts.trustedKeys, log, now, pointerTtlMs: opts.pointerTtlMs ?? 30 * 86_400_000 });

  const app = Fastify({
    loggerInstance: log,
    // Requests are not logged one by one: agents and the CLI poll; errors are logged where they happen.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    ...(opts.https ? { https: opts.https } : {}),
  }) as unknown as KilnServer;
  app.decorate('kiln', { hub, fleets, deployments });
  installErrorHandler(app);
  app.server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url ?? '/', 'http://x').pathname !== AGENTS_PATH) return socket.destroy();
    hub.handleUpgrade(req, socket, head);
  });
  app.get('/v1/health', async () => ({ ok: true }));
  await app.register(async (api) => {
    requireOperator(api, opts.operatorTokens, fleets);
    await api.register(fleetRoutes, { fleets, hub, deployments });
    await api.register(deploymentRoutes, { deployments });
    await api.register(releaseRoutes, { store, keys: opts.trustedKeys });
  });
  app.addHook('onListen', async () => {
    await deployments.resume();
  });
  // Before the HTTP server closes: it waits for every socket, and the agents' sockets end only here.
  app.addHook('preClose', async () => {
    deployments.close();
    await deployments.idle();
    await hub.close();
  });
  return app;
}

