import { mkdir, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import { createAgent, parseAgentConfig, type Agent, type AgentConfig, type AgentConfigInput, type AgentEvent } from '@kiln/agent';
import { PROTOCOL_VERSION, appLayout, createProcessSupervisor, pollUntil, type Logger, type Message, type ReleaseRef, type ReleaseStore } from '@kiln/shared';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { FAST_AGENT } from './fast-agent.js';
import { freePort, quietLog, tempDir, type Keys } from './release.js';
import type { S3Fixture } from './s3.js';

export const CREDENTIAL = 'agent-credential-for-tests-0123456789';

/** A stand-in for the controller's agent endpoint: a real WebSocket server that records every frame. */
export interface FakeController {
  url: string;
  port: number;
  frames: Array<{ instanceId: string; msg: Message | { raw: string } }>;
  sockets: Map<string, WebSocket>;
  /** sends a JSON value (protocol version added unless given) or raw text to an instance */
  send(instanceId: string, value: Record<string, unknown> | string): void;
  command(instanceId: string, id: string, action: Record<string, unknown>, app?: string): void;
  /** the first recorded frame from `instanceId` (after `from`) matching `pred` */
  waitFor<T extends Message['type']>(instanceId: string, type: T, pred?: (m: Extract<Message, { type: T }>) => boolean, timeoutMs?: number): Promise<Extract<Message, { type: T }>>;
  /** stops accepting: closes every socket and the server */
  close(): Promise<void>;
}

/** A fake controller on a port the kernel picks, or on `port` (where one that went away comes back). */
export async function startFakeController(opts: { port?: number } = {}): Promise<FakeController> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: opts.port ?? 0, maxPayload: 8 * 1024 * 1024 });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  const { port } = wss.address() as AddressInfo;
  const frames: FakeController['frames'] = [];
  const sockets = new Map<string, WebSocket>();
  wss.on('connection', (ws: WebSocket, req: IncomingMessage) => {
    const instanceId = String(req.headers['x-kiln-instance']);
    if (req.headers.authorization !== `Bearer ${CREDENTIAL}`) return ws.close(1008, 'bad credential');
    sockets.set(instanceId, ws);
    ws.on('message', (data) => {
      const raw = data.toString();
      try {
        frames.push({ instanceId, msg: JSON.parse(raw) as Message });
      } catch {
        frames.push({ instanceId, msg: { raw } });
      }
    });
    ws.on('close', () => sockets.get(instanceId) === ws && sockets.delete(instanceId));
  });
  const fc: FakeController = {
    url: `ws://127.0.0.1:${port}/agents`,
    port,
    frames,
    sockets,
    send(instanceId, value) {
      const ws = sockets.get(instanceId);
      if (!ws) throw new Error(`${instanceId} is not connected`);
      ws.send(typeof value === 'string' ? value : JSON.stringify({ v: PROTOCOL_VERSION, ...value }));
    },
    command(instanceId, id, action, app = 'web') {
      fc.send(instanceId, { type: 'command', id, instanceId, app, action });
    },
    async waitFor(instanceId, type, pred = () => true, timeoutMs = 20_000) {
      const hit = await pollUntil({
        check: () => frames.find((f) => f.instanceId === instanceId && 'type' in f.msg && f.msg.type === type && pred(f.msg as never)),
        timeoutMs,
        intervalMs: 20,
        timeoutError: () => new Error(`no ${type} frame from ${instanceId} within ${timeoutMs} ms; got: ${JSON.stringify(frames.filter((f) => f.instanceId === instanceId).map((f) => f.msg)).slice(0, 2000)}`),
      });
      return hit.msg as never;
    },
    async close() {
      for (const ws of sockets.values()) ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
  return fc;
}

/** The install action a controller sends for a published release. */
export const installAction = (ref: ReleaseRef) => ({ kind: 'install', ...ref });

export interface TestAgent {
  agent: Agent;
  root: string;
  port: number;
  instanceId: string;
  events: AgentEvent[];
  serving(): Promise<string | undefined>;
  stop(): Promise<void>;
}

export interface AgentConfigArgs {
  s3: S3Fixture;
  keys: Keys;
  controller?: FakeController;
  root?: string;
  instanceId?: string;
  config?: Partial<AgentConfigInput>;
}

/** Writes an agent config to ROOT/etc/kiln/agent.json under a fresh root (or the given one), as a host's image would carry it. */
export async function writeAgentConfig(args: AgentConfigArgs): Promise<{ root: string; instanceId: string; port: number; config: AgentConfig }> {
  const root = args.root ?? (await tempDir('kiln-test-agent-'));
  const instanceId = args.instanceId ?? `i-${path.basename(root).slice(-6)}`;
  // Picked before the agent starts: the agent hands it to the app it starts (PORT), and tests dial it.
  const port = args.config?.port ?? (await freePort());
  const raw: AgentConfigInput = {
    instanceId,
    imageId: 'img-test',
    app: 'web',
    channel: 'stable',
    s3: args.s3.s3.location,
    keys: [args.keys.publicPem],
    port,
    ...FAST_AGENT,
    ...(args.controller ? { controller: { url: args.controller.url, credential: CREDENTIAL } } : {}),
    ...args.config,
  };
  await mkdir(path.join(root, 'etc/kiln'), { recursive: true });
  await writeFile(path.join(root, 'etc/kiln/agent.json'), JSON.stringify(raw, null, 2));
  return { root, instanceId, port, config: parseAgentConfig(raw, 'test config') };
}

export type MakeAgentArgs = AgentConfigArgs & {
  store?: ReleaseStore;
  maxQueued?: number;
  /** the agent's root logger (default: quiet) */
  log?: Logger;
};

/** Writes an agent config and makes an agent on it with the process supervisor. */
export async function makeAgent(args: MakeAgentArgs): Promise<TestAgent> {
  const { root, instanceId, port, config } = await writeAgentConfig(args);
  const log = args.log ?? quietLog();
  const events: AgentEvent[] = [];
  const agent = createAgent({
    root,
    config,
    log,
    ...(args.store ? { store: args.store } : {}),
    ...(args.maxQueued !== undefined ? { maxQueued: args.maxQueued } : {}),
    onEvent: (e) => events.push(e),
  });
  const service = createProcessSupervisor({ appDir: appLayout(root, 'web').appDir, log });
  return {
    agent,
    root,
    port,
    instanceId,
    events,
    serving: () => servingOn(port),
    async stop() {
      await agent.stop();
      await service.stop();
    },
  };
}

export interface AgentPool {
  /** makes an agent on the file's defaults (`args` on top) and keeps it for stopAll */
  make(args?: Partial<MakeAgentArgs>): Promise<TestAgent>;
  /** the same, started and idle: its boot install done */
  booted(args?: Partial<MakeAgentArgs>): Promise<TestAgent>;
  /** stops every agent made so far (after each test) */
  stopAll(): Promise<void>;
}

/** The agents of a test file, made on `defaults` (read when an agent is made: after beforeAll has set them). */
export function agentPool(defaults: () => MakeAgentArgs): AgentPool {
  const agents: TestAgent[] = [];
  const pool: AgentPool = {
    async make(args = {}) {
      const a = await makeAgent({ ...defaults(), ...args });
      agents.push(a);
      return a;
    },
    async booted(args = {}) {
      const a = await pool.make(args);
      await a.agent.start();
      await a.agent.idle();
      return a;
    },
    async stopAll() {
      await Promise.all(agents.splice(0).map((a) => a.stop()));
    },
  };
  return pool;
}

/** What the app on `port` answers, or undefined when nothing serves there. */
export async function servingOn(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
    return await res.text();
  } catch {
    return undefined;
  }
}

/** Polls until `check` holds (or throws with `what`). */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  await pollUntil({ check, timeoutMs, timeoutError: () => new Error(`timed out waiting for ${what}`) });
}
