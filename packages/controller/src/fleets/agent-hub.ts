import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { InstanceId, MAX_FRAME_BYTES, asKilnError, frame, parseFrame, type AgentReport, type CommandAction, type CommandResult, type Logger, type Message } from '@kiln/shared';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Fleet } from './fleet-model.js';

export interface HubInstance {
  instanceId: string;
  fleet: string;
  connected: boolean;
  connectedAt: string;
  lastSeen: string;
  report: AgentReport | null;
  /** command outcomes the agent told us of (hello and live), by command id */
  results: Map<string, CommandResult>;
}

export interface HubEvents {
  report: [instanceId: string, report: AgentReport];
  result: [instanceId: string, result: CommandResult];
  progress: [instanceId: string, commandId: string, stage: string];
  connection: [instanceId: string, connected: boolean];
}

export interface AgentHub extends EventEmitter<HubEvents> {
  /** for the HTTP server's `upgrade` event on the agents' path */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  instances(fleet?: string): HubInstance[];
  get(instanceId: string): HubInstance | undefined;
  /** Sends a command to a connected agent; false when it is not connected. */
  command(instanceId: string, id: string, app: string, action: CommandAction): boolean;
  close(): Promise<void>;
}

type Auth = (token: string) => { fleet: Fleet } | { refuse: 'KILN_UNAUTHORIZED' | 'KILN_FORBIDDEN' };

/**
 * The agents' WebSocket endpoint: authenticates each connection with its fleet's agent credential,
 * keeps the live view of every instance from its reports, sends commands, drops silent peers.
 */
export function createAgentHub(opts: { log: Logger; auth: Auth; heartbeatMs?: number; now?: () => Date }): AgentHub {
  const log = opts.log.child({ module: 'hub' });
  const now = opts.now ?? (() => new Date());
  const wss = new WebSocketServer({ noServer: true, maxPayload: 4 * MAX_FRAME_BYTES, perMessageDeflate: false });
  const known = new Map<string, HubInstance>();
  const sockets = new Map<string, WebSocket>();
  const alive = new WeakSet<WebSocket>();
  const hub = new EventEmitter<HubEvents>() as AgentHub;

  const beat = setInterval(() => {
    for (const ws of sockets.values()) {
      if (!alive.has(ws)) {
        ws.terminate();
        continue;
      }
      alive.delete(ws);
      ws.ping();
    }
  }, opts.heartbeatMs ?? 15_000);
  beat.unref();

  function refuse(ws: WebSocket, code: string, message: string): void {
    ws.send(frame({ type: 'error', error: { code, message } }));
  }

  function attach(ws: WebSocket, fleet: Fleet, instanceId: string): void {
    const old = sockets.get(instanceId);
    if (old) {
      log.warn({ instanceId }, 'a second connection for this instance replaces the first');
      sockets.delete(instanceId);
      old.close(4000, 'replaced by a newer connection');
    }
    sockets.set(instanceId, ws);
    alive.add(ws);
    const at = now().toISOString();
    const inst = known.get(instanceId) ?? { instanceId, fleet: fleet.name, connected: false, connectedAt: at, lastSeen: at, report: null, results: new Map() };
    Object.assign(inst, { fleet: fleet.name, connected: true, connectedAt: at, lastSeen: at });
    known.set(instanceId, inst);
    log.info({ instanceId, fleet: fleet.name }, 'agent connected');

    ws.on('pong', () => alive.add(ws));
    ws.on('message', (data, isBinary) => {
      alive.add(ws);
      inst.lastSeen = now().toISOString();
      let msg: Message;
      try {
        msg = parseFrame(isBinary ? (data as Buffer) : data.toString(), 'agent');
      } catch (err) {
        const e = asKilnError(err, 'KILN_FRAME_INVALID');
        log.warn({ instanceId, code: e.code }, 'refused a frame from an agent');
        return refuse(ws, e.code, e.message);
      }
      if (msg.type === 'hello' || msg.type === 'report') {
        const r = msg.report;
        if (r.instanceId !== instanceId || r.app !== fleet.app) {
          log.warn({ instanceId, claimed: r.instanceId, app: r.app }, 'an agent reported for another instance or app');
          return refuse(ws, 'KILN_FORBIDDEN', `this connection is ${instanceId} of fleet ${fleet.name} (${fleet.app}); a report for ${r.instanceId} (${r.app}) is refused`);
        }
        inst.report = r;
        if (msg.type === 'hello') for (const res of msg.results) remember(inst, res);
        hub.emit('report', instanceId, r);
        if (msg.type === 'hello') hub.emit('connection', instanceId, true);
      } else if (msg.type === 'result') {
        remember(inst, msg.result);
        hub.emit('result', instanceId, msg.result);
      } else if (msg.type === 'progress') {
        hub.emit('progress', instanceId, msg.commandId, msg.stage);
      } else if (msg.type === 'error') {
        log.warn({ instanceId, error: msg.error }, 'an agent refused a frame of ours');
      }
    });
    ws.on('close', () => {
      if (sockets.get(instanceId) !== ws) return; // replaced
      sockets.delete(instanceId);
      inst.connected = false;
      log.info({ instanceId }, 'agent disconnected');
      hub.emit('connection', instanceId, false);
    });
    ws.on('error', (err) => log.warn({ instanceId, err: err.message }, 'agent socket error'));
  }

  function remember(inst: HubInstance, res: CommandResult): void {
    inst.results.set(res.commandId, res);
    if (inst.results.size > 200) inst.results.delete(inst.results.keys().next().value!);
  }

  hub.handleUpgrade = (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => {
      const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      const who = auth ? opts.auth(auth[1]!) : ({ refuse: 'KILN_UNAUTHORIZED' } as const);
      if ('refuse' in who) {
        log.warn({ code: who.refuse, from: req.socket.remoteAddress }, 'refused an agent connection');
        return ws.close(1008, who.refuse === 'KILN_FORBIDDEN' ? 'KILN_FORBIDDEN: an operator credential cannot connect as an agent' : 'KILN_UNAUTHORIZED: no or unknown agent credential');
      }
      const instanceId = String(req.headers['x-kiln-instance'] ?? '');
      if (!InstanceId.safeParse(instanceId).success) return ws.close(1008, 'KILN_REQUEST_INVALID: the X-Kiln-Instance header is missing or invalid');
      // Instances are keyed by id alone: another fleet's credential must not replace this one's
      // connection and receive its commands.
      const owner = known.get(instanceId)?.fleet;
      if (owner && owner !== who.fleet.name) {
        log.warn({ instanceId, fleet: who.fleet.name, owner }, 'refused an agent connection for an instance of another fleet');
        return ws.close(1008, `KILN_FORBIDDEN: instance ${instanceId} belongs to another fleet`);
      }
      attach(ws, who.fleet, instanceId);
    });
  };
  hub.instances = (fleet) => [...known.values()].filter((i) => !fleet || i.fleet === fleet);
  hub.get = (id) => known.get(id);
  hub.command = (instanceId, id, app, action) => {
    const ws = sockets.get(instanceId);
    if (!ws) return false;
    ws.send(frame({ type: 'command', id, instanceId, app, action }));
    return true;
  };
  hub.close = async () => {
    clearInterval(beat);
    for (const ws of sockets.values()) ws.close(1001, 'controller stopping');
    await new Promise<void>((resolve) => wss.close(() => resolve()));
    for (const ws of sockets.values()) ws.terminate();
  };
  return hub;
}
