import type { S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { buildServer, type BalancerSource, type KilnServer, type LaunchOptions, type Provider } from '@kiln/controller';
import { createS3Client, type Logger } from '@kiln/shared';
import { expect } from 'vitest';
import { makeAgent, until, type TestAgent } from './agent.js';
import { FAST_CONTROLLER_HEARTBEAT_MS, FAST_LAUNCHED_AGENT } from './fast-agent.js';
import { quietLog, type Keys } from './release.js';
import type { S3Fixture } from './s3.js';

export const OPERATOR = 'operator-token-for-tests-0123456789';

/** What a test controller launches instances with: `provider`, the fixture's bucket, fast agents, deadlines that fit a busy machine. */
export const testLaunch = (provider: Provider, s3: S3Fixture): LaunchOptions => ({
  provider,
  agentSecret: randomBytes(32),
  s3: s3.s3.location,
  agentSettings: FAST_LAUNCHED_AGENT,
  bakeTimeouts: { launchMs: 20_000, installMs: 30_000, imageMs: 30_000 },
  launchTimeoutMs: 20_000,
});

export interface TestController {
  server: KilnServer;
  url: string;
  port: number;
  /** ws:// URL of the agents' endpoint */
  agentsUrl: string;
  /** an operator API call; returns status and parsed body */
  api(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: any }>;
  close(): Promise<void>;
}

/**
 * A real controller (buildServer) listening on 127.0.0.1, on the fixture's bucket: on a port the
 * kernel picks, or on `port` (where one that went away comes back); over https when given a
 * certificate (then `api` does not trust it: the test brings its own client).
 */
export async function startController(args: {
  s3: S3Fixture;
  keys: Keys;
  log?: Logger;
  port?: number;
  client?: S3Client;
  launch?: LaunchOptions;
  https?: { cert: string; key: string };
  balancers?: BalancerSource;
}): Promise<TestController> {
  const server = await buildServer({
    log: args.log ?? quietLog(),
    s3: args.client ?? createS3Client(args.s3.s3.location),
    bucket: args.s3.s3.location.bucket,
    operatorTokens: [OPERATOR],
    signingKey: args.keys.key,
    trustedKeys: args.keys.keys,
    heartbeatMs: FAST_CONTROLLER_HEARTBEAT_MS,
    ...(args.launch ? { launch: args.launch } : {}),
    ...(args.https ? { https: args.https } : {}),
    ...(args.balancers ? { balancers: args.balancers } : {}),
  });
  await server.listen({ host: '127.0.0.1', port: args.port ?? 0 });
  const { port } = server.server.address() as { port: number };
  const url = `${args.https ? 'https' : 'http'}://127.0.0.1:${port}`;
  return {
    server,
    url,
    port,
    agentsUrl: `${args.https ? 'wss' : 'ws'}://127.0.0.1:${port}/v1/agents`,
    api: apiClient(url),
    close: () => server.close(),
  };
}

/** Operator API calls against the controller at `url` (a string body is sent as it is). */
export function apiClient(url: string): TestController['api'] {
  return async (method, path, body, token = OPERATOR) => {
    const res = await fetch(url + path, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
}

/**
 * A fleet and `count` real agents (process supervisor, own roots and ports) connected to it, on
 * `channel` (default stable, where STANDARD_RELEASES puts 1.0.0; two fleets of an app need two channels).
 */
export async function startFleet(args: { s3: S3Fixture; keys: Keys; ctl: Pick<TestController, 'api' | 'agentsUrl'>; name?: string; count: number; app?: string; channel?: string }): Promise<{ agents: TestAgent[]; credential: string; name: string }> {
  const name = args.name ?? 'web';
  const channel = args.channel ?? 'stable';
  const created = await args.ctl.api('POST', '/v1/fleets', { name, app: args.app ?? 'web', channel });
  if (created.status !== 201) throw new Error(`fleet create: ${JSON.stringify(created.body)}`);
  const credential = created.body.agentCredential as string;
  const agents: TestAgent[] = [];
  for (let i = 0; i < args.count; i++) {
    const a = await makeAgent({ s3: args.s3, keys: args.keys, instanceId: `${name}-${i + 1}`, config: { channel, controller: { url: args.ctl.agentsUrl, credential } } });
    agents.push(a);
  }
  await Promise.all(agents.map((a) => a.agent.start()));
  return { agents, credential, name };
}

type Api = Pick<TestController, 'api'>;

/** A fleet's instance rows, as `kiln status` reads them. */
export const fleetRows = async (fleet: string, c: Api): Promise<any[]> => (await c.api('GET', `/v1/fleets/${fleet}/instances`)).body.instances;

/** The server goes on: health and an authenticated call answer. */
export async function stillServing(c: Api): Promise<void> {
  expect((await c.api('GET', '/v1/health')).status).toBe(200);
  expect((await c.api('GET', '/v1/fleets')).status).toBe(200);
}

/** The deployment once it is over (neither running nor paused at its canary). */
export async function deploymentOver(id: string, c: Api, timeoutMs = 30_000): Promise<any> {
  let d: any;
  await until(`deployment ${id} to finish`, async () => !['running', 'paused'].includes((d = (await c.api('GET', `/v1/deployments/${id}`)).body.deployment).state), timeoutMs);
  return d;
}

/** Ends a controller on the process provider and what it launched: the controller, every instance left, S3, the provider's dir. */
export async function closeProcessStack(o: { ctl?: TestController; provider?: Provider; s3?: S3Fixture; dir?: string }): Promise<void> {
  await o.ctl?.close();
  const left = await o.provider?.describeInstances({});
  await o.provider?.terminate((left ?? []).map((i) => i.id));
  await o.s3?.close();
  if (o.dir) await rm(o.dir, { recursive: true, force: true });
}
