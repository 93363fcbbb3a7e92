import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  InstanceId,
  MAX_FRAME_BYTES,
  NONCE_HEADER,
  asKilnError,
  frame,
  keyFingerprint,
  newNonce,
  parseFrame,
  type AgentReport,
  type CommandAction,
  type CommandResult,
  type ErrorCode,
  type Logger,
  type Message,
  type MessageOf,
  type Outgoing,
} from '@kiln/shared';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Fleet } from './fleet-model.js';
import { DEFAULT_INSTANCE_LIMITS, admit, inGroup, instanceCap, type InstanceLimits } from './instance-admission.js';
import type { InstanceRecords } from './instance-records.js';

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
  /** a log stream's frames (log-streams.ts reads them) */
  logs: [instanceId: string, msg: MessageOf<'log-start' | 'log-lines' | 'log-end'>];
}

export interface AgentHub extends EventEmitter<HubEvents> {
  /** for the HTTP server's `upgrade` event on the agents' path */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  instances(fleet?: string): HubInstance[];
  get(instanceId: string): HubInstance | undefined;
  /** Sends a command to a connected agent; false when it is not connected. */
  command(instanceId: string, id: string, app: string, action: CommandAction): boolean;
  /** Sends any frame to a connected agent (a log request); false when it is not connected. */
  send(instanceId: string, msg: Outgoing): boolean;
  /** Drops instances for good (terminated, or their fleet deleted): closes their connections and forgets their records. */
  forget(instanceIds: string[]): void;
  /** Drops every instance of a deleted fleet: those seen since the start and those only pinned in its records. */
  forgetFleet(fleet: string): void;
  close(): Promise<void>;
}

type Auth = (token: string) => { fleet: Fleet } | { refuse: 'KILN_UNAUTHORIZED' | 'KILN_FORBIDDEN' };

export interface AgentHubOptions {
  log: Logger;
  auth: Auth;
  /** the instance records (pinned agent keys), loaded */
  records: InstanceRecords;
  /** the fleet as it is now (its size and groups), undefined for a bake's builders */
  fleet: (name: string) => Fleet | undefined;
  limits?: Partial<InstanceLimits>;
  heartbeatMs?: number;
  now?: () => Date;
}

/**
 * The agents' WebSocket endpoint: authenticates each connection with its fleet's agent credential,
 * admits it at its hello (the agent's key proved and pinned, within the fleet's cap), keeps the live
 * view of every instance from its reports, sends commands, drops silent peers and expires records
 * of instances long gone. Nothing is recorded for a connection before its hello is admitted.
 */
/**
 * Closes with the policy code 1008 and `reason` ("CODE: message"), cut to the 123 bytes a close
 * frame carries: a longer reason (a 63-character fleet name, a 128-character instance id) made ws
 * throw inside the upgrade handler, which ended the controller.
 */
function closeRefused(ws: WebSocket, reason: string): void {
  const bytes = Buffer.from(reason);
  let cut = bytes.length <= 123 ? reason : bytes.subarray(0, 123).toString();
  // a multi-byte character cut in two decodes as U+FFFD (3 bytes): drop it
  while (Buffer.byteLength(cut) > 123) cut = cut.slice(0, -1);
  ws.close(1008, cut);
}

export function createAgentHub(opts: AgentHubOptions): AgentHub {
  const log = opts.log.child({ module: 'hub' });
  const now = opts.now ?? (() => new Date());
  const limits: InstanceLimits = { ...DEFAULT_INSTANCE_LIMITS, ...opts.limits };
  const { records } = opts;
  const wss = new WebSocketServer({ noServer: true, maxPayload: 4 * MAX_FRAME_BYTES, perMessageDeflate: false });
  const known = new Map<string, HubInstance>();
  const sockets = new Map<string, WebSocket>();
  const alive = new WeakSet<WebSocket>();
  /** connections not yet admitted, per fleet */
  const pending = new Map<string, Set<WebSocket>>();
  const nonces = new WeakMap<IncomingMessage, string>();
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

  // Records of instances outside their fleet's groups that have been away for the expiry window go:
  // what is left of a host that is gone, or of ids someone connected once with the fleet's credential.
  const sweep = setInterval(() => {
    const cutoff = now().getTime() - limits.expireAfterMs;
    const gone = records
      .all()
      .filter((r) => !sockets.has(r.instanceId) && r.seenAt <= cutoff)
      .filter((r) => {
        const f = opts.fleet(r.fleet);
        return !f || !inGroup(f, r.instanceId);
      })
      .map((r) => r.instanceId);
    if (gone.length) {
      log.info({ instances: gone.length, first: gone.slice(0, 5), afterMs: limits.expireAfterMs }, 'expired the records of instances away for the expiry window');
      drop(gone);
    }
  }, Math.min(60_000, Math.max(50, limits.expireAfterMs / 4)));
  sweep.unref();

  wss.on('headers', (headers, req) => {
    const nonce = nonces.get(req);
    if (nonce) headers.push(`${NONCE_HEADER}: ${nonce}`);
  });

  function refuse(ws: WebSocket, code: string, message: string): void {
    ws.send(frame({ type: 'error', error: { code, message } }));
  }

  /** An error frame the agent logs, then the close (1008, the code as reason) a raw client sees. */
  function turnAway(ws: WebSocket, code: ErrorCode, message: string): void {
    refuse(ws, code, message);
    closeRefused(ws, `${code}: ${message}`);
  }

  /** Forgets instances: their records, their live view, their sockets. */
  function drop(ids: string[]): void {
    records.remove(ids);
    for (const id of ids) {
      const ws = sockets.get(id);
      // Deleted first: the close handler then takes it for a replaced socket and reports nothing.
      sockets.delete(id);
      ws?.close(4001, 'instance removed');
      known.delete(id);
    }
  }

  /** A connection before its hello: it may send the hello and nothing else, within the hello timeout. */
  function greet(ws: WebSocket, given: Fleet, instanceId: string, nonce: string, from: string | undefined): void {
    let waiting = pending.get(given.name);
    if (!waiting) pending.set(given.name, (waiting = new Set()));
    waiting.add(ws);
    const settle = () => {
      clearTimeout(timer);
      waiting!.delete(ws);
      if (waiting!.size === 0 && pending.get(given.name) === waiting) pending.delete(given.name);
    };
    const timer = setTimeout(() => {
      log.warn({ instanceId, fleet: given.name }, 'closed an agent connection that sent no hello');
      turnAway(ws, 'KILN_AGENT_TIMEOUT', `no hello within ${limits.helloTimeoutMs} ms of connecting`);
    }, limits.helloTimeoutMs);
    let admitted: HubInstance | undefined;

    ws.on('message', (data, isBinary) => {
      let msg: Message;
      try {
        msg = parseFrame(isBinary ? (data as Buffer) : data.toString(), 'agent');
      } catch (err) {
        const e = asKilnError(err, 'KILN_FRAME_INVALID');
        log.warn({ instanceId, code: e.code }, 'refused a frame from an agent');
        return refuse(ws, e.code, e.message);
      }
      if (msg.type === 'hello') {
        // A fleet deleted while this connection waited: its credential is no longer any fleet's (a bake's builder has no record).
        const current = opts.fleet(given.name);
        if (!current && !given.name.startsWith('bake:')) {
          settle();
          return turnAway(ws, 'KILN_UNAUTHORIZED', `fleet ${given.name} was deleted: its agent credential is refused`);
        }
        const fleet = current ?? given;
        const r = msg.report;
        if (r.instanceId !== instanceId || r.app !== fleet.app) {
          log.warn({ instanceId, claimed: r.instanceId, app: r.app }, 'an agent reported for another instance or app');
          return refuse(ws, 'KILN_FORBIDDEN', `this connection is ${instanceId} of fleet ${fleet.name} (${fleet.app}); a report for ${r.instanceId} (${r.app}) is refused`);
        }
        const a = admit({ records, limits, fleet, instanceId, identity: msg.identity, nonce });
        if (!a.ok) {
          // warn: an operator must see a key that is not the pinned one, or a fleet at its limit
          log.warn({ instanceId, fleet: fleet.name, code: a.code, from, ...a.log }, `refused an agent's hello: ${a.message}`);
          settle();
          return turnAway(ws, a.code, a.message);
        }
        if (!admitted) {
          settle();
          if (a.pinned) log.info({ instanceId, fleet: fleet.name, key: keyFingerprint(msg.identity.publicKey) }, 'pinned the agent key of a new instance');
          admitted = attach(ws, fleet, instanceId);
        }
        admitted.report = r;
        for (const res of msg.results) remember(admitted, res);
        hub.emit('report', instanceId, r);
        hub.emit('connection', instanceId, true);
        return;
      }
      if (!admitted) return refuse(ws, 'KILN_FRAME_INVALID', `a "${msg.type}" frame before the hello: the hello comes first on every connection`);
      alive.add(ws);
      admitted.lastSeen = now().toISOString();
      if (msg.type === 'report') {
        if (msg.report.instanceId !== instanceId || msg.report.app !== given.app) {
          log.warn({ instanceId, claimed: msg.report.instanceId, app: msg.report.app }, 'an agent reported for another instance or app');
          return refuse(ws, 'KILN_FORBIDDEN', `this connection is ${instanceId} of fleet ${admitted.fleet}; a report for ${msg.report.instanceId} (${msg.report.app}) is refused`);
        }
        admitted.report = msg.report;
        hub.emit('report', instanceId, msg.report);
      } else if (msg.type === 'result') {
        remember(admitted, msg.result);
        hub.emit('result', instanceId, msg.result);
      } else if (msg.type === 'progress') {
        hub.emit('progress', instanceId, msg.commandId, msg.stage);
      } else if (msg.type === 'log-start' || msg.type === 'log-lines' || msg.type === 'log-end') {
        hub.emit('logs', instanceId, msg);
      } else if (msg.type === 'error') {
        log.warn({ instanceId, error: msg.error }, 'an agent refused a frame of ours');
      }
    });
    ws.on('close', () => {
      settle();
      if (!admitted || sockets.get(instanceId) !== ws) return; // never admitted, replaced or forgotten
      sockets.delete(instanceId);
      admitted.connected = false;
      const r = records.get(instanceId);
      if (r) r.seenAt = now().getTime();
      log.info({ instanceId }, 'agent disconnected');
      hub.emit('connection', instanceId, false);
    });
    ws.on('error', (err) => log.warn({ instanceId, err: err.message }, 'agent socket error'));
  }

  /** An admitted connection becomes the instance's one socket; a previous one (the same agent, reconnected) is closed. */
  function attach(ws: WebSocket, fleet: Fleet, instanceId: string): HubInstance {
    const old = sockets.get(instanceId);
    if (old) {
      log.warn({ instanceId }, 'a second connection for this instance replaces the first');
      sockets.delete(instanceId);
      old.close(4000, 'replaced by a newer connection');
    }
    sockets.set(instanceId, ws);
    alive.add(ws);
    ws.on('pong', () => alive.add(ws));
    const at = now().toISOString();
    const inst = known.get(instanceId) ?? { instanceId, fleet: fleet.name, connected: false, connectedAt: at, lastSeen: at, report: null, results: new Map() };
    Object.assign(inst, { fleet: fleet.name, connected: true, connectedAt: at, lastSeen: at });
    known.set(instanceId, inst);
    log.info({ instanceId, fleet: fleet.name }, 'agent connected');
    return inst;
  }

  function remember(inst: HubInstance, res: CommandResult): void {
    inst.results.set(res.commandId, res);
    if (inst.results.size > 200) inst.results.delete(inst.results.keys().next().value!);
  }

  hub.handleUpgrade = (req, socket, head) => {
    const nonce = newNonce();
    nonces.set(req, nonce);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      const who = auth ? opts.auth(auth[1]!) : ({ refuse: 'KILN_UNAUTHORIZED' } as const);
      if ('refuse' in who) {
        log.warn({ code: who.refuse, from: req.socket.remoteAddress }, 'refused an agent connection');
        return closeRefused(ws, who.refuse === 'KILN_FORBIDDEN' ? 'KILN_FORBIDDEN: an operator credential cannot connect as an agent' : 'KILN_UNAUTHORIZED: no or unknown agent credential');
      }
      const instanceId = String(req.headers['x-kiln-instance'] ?? '');
      if (!InstanceId.safeParse(instanceId).success) return closeRefused(ws, 'KILN_REQUEST_INVALID: the X-Kiln-Instance header is missing or invalid');
      // Instances are keyed by id alone: another fleet's credential must not replace this one's
      // connection and receive its commands.
      const owner = records.get(instanceId)?.fleet ?? known.get(instanceId)?.fleet;
      if (owner && owner !== who.fleet.name) {
        log.warn({ instanceId, fleet: who.fleet.name, owner }, 'refused an agent connection for an instance of another fleet');
        return closeRefused(ws, `KILN_FORBIDDEN: instance ${instanceId} belongs to another fleet`);
      }
      // Connections waiting for their hello hold sockets, not records: as many as the fleet may have instances.
      const fleet = opts.fleet(who.fleet.name) ?? who.fleet;
      const room = instanceCap(fleet.size, limits) + fleet.groups.reduce((n, g) => n + g.instances.length, 0);
      if ((pending.get(fleet.name)?.size ?? 0) >= room) {
        log.warn({ instanceId, fleet: fleet.name, pending: room }, 'refused an agent connection: too many connections of the fleet wait for their hello');
        return closeRefused(ws, `KILN_INSTANCE_LIMIT: ${room} connections of fleet ${fleet.name} already wait for their hello`);
      }
      greet(ws, who.fleet, instanceId, nonce, req.socket.remoteAddress);
    });
  };
  hub.instances = (fleet) => [...known.values()].filter((i) => !fleet || i.fleet === fleet);
  hub.get = (id) => known.get(id);
  hub.send = (instanceId, msg) => {
    const ws = sockets.get(instanceId);
    if (!ws) return false;
    ws.send(frame(msg));
    return true;
  };
  hub.command = (instanceId, id, app, action) => hub.send(instanceId, { type: 'command', id, instanceId, app, action });
  hub.forget = (ids) => {
    const had = ids.filter((id) => known.has(id) || records.get(id));
    drop(ids);
    for (const id of had) log.info({ instanceId: id }, 'instance forgotten');
  };
  hub.forgetFleet = (fleet) => {
    hub.forget([...new Set([...hub.instances(fleet).map((i) => i.instanceId), ...records.of(fleet).map((r) => r.instanceId)])]);
  };
  hub.close = async () => {
    clearInterval(beat);
    clearInterval(sweep);
    for (const ws of sockets.values()) ws.close(1001, 'controller stopping');
    for (const set of pending.values()) for (const ws of set) ws.close(1001, 'controller stopping');
    await new Promise<void>((resolve) => wss.close(() => resolve()));
    for (const ws of sockets.values()) ws.terminate();
    await records.flush();
  };
  return hub;
}
