import { randomBytes } from 'node:crypto';
import type { Logger } from '@kiln/shared';
import type { AgentHub, HubEvents } from './agent-hub.js';

/** Agents from this version on serve log streams; an older one would refuse the request as an unknown frame. */
export const LOGS_SINCE_AGENT = '0.3.0';

/** How long an agent has to answer a log request with `log-start` before the stream ends with KILN_AGENT_TIMEOUT. */
const START_TIMEOUT_MS = 10_000;

export interface LogStreamRequest {
  instanceId: string;
  /** one process, or every process of the app */
  process?: string | undefined;
  lines: number;
  follow: boolean;
}

export interface LogStreamHandlers {
  onLines(process: string, lines: string[]): void;
  /** once: the agent sent all it had (no follow) or failed; `error` says why it failed */
  onEnd(error?: { code: string; message: string }): void;
}

export interface LogStreams {
  /** Asks the instance's agent for its app's output; returns the function that stops the stream (no onEnd then). */
  open(req: LogStreamRequest, handlers: LogStreamHandlers): () => void;
  /** Stops every stream and stops listening to the hub. */
  close(): void;
}

interface Stream {
  instanceId: string;
  handlers: LogStreamHandlers;
  timer: NodeJS.Timeout;
}

/** Whether version `v` (`0.3.0`, `0.3.0-1a2b…`) is `min` or newer. */
export function versionAtLeast(v: string, min: string): boolean {
  const parts = (s: string) => s.split('-')[0]!.split('.').map((x) => Number(x) || 0);
  const [a, b] = [parts(v), parts(min)];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return true;
}

/**
 * Log streams from agents over the hub (docs/protocol.md): one id per stream, frames matched to the
 * stream by id and instance (an agent cannot write into another's), ended when the agent says so,
 * disconnects, or does not answer the request in time.
 */
export function createLogStreams(o: { hub: AgentHub; log: Logger; startTimeoutMs?: number }): LogStreams {
  const log = o.log.child({ module: 'log-streams' });
  const streams = new Map<string, Stream>();

  function end(id: string, error?: { code: string; message: string }): void {
    const s = streams.get(id);
    if (!s) return;
    streams.delete(id);
    clearTimeout(s.timer);
    s.handlers.onEnd(error);
  }

  const onLogs = (...[instanceId, msg]: HubEvents['logs']) => {
    const s = streams.get(msg.id);
    if (!s || s.instanceId !== instanceId) return;
    if (msg.type === 'log-start') clearTimeout(s.timer);
    else if (msg.type === 'log-lines') s.handlers.onLines(msg.process, msg.lines);
    else end(msg.id, msg.error);
  };
  const onConnection = (...[instanceId, connected]: HubEvents['connection']) => {
    if (connected) return;
    for (const [id, s] of streams) if (s.instanceId === instanceId) end(id, { code: 'KILN_AGENT_NOT_CONNECTED', message: `the agent of ${instanceId} disconnected` });
  };
  o.hub.on('logs', onLogs);
  o.hub.on('connection', onConnection);

  return {
    open(req, handlers) {
      const id = `l-${randomBytes(12).toString('base64url')}`;
      const fail = (code: string, message: string) => {
        handlers.onEnd({ code, message });
        return () => undefined;
      };
      const inst = o.hub.get(req.instanceId);
      if (!inst?.connected) return fail('KILN_AGENT_NOT_CONNECTED', `the agent of ${req.instanceId} is not connected to this controller`);
      const version = inst.report?.agentVersion ?? '0';
      if (!versionAtLeast(version, LOGS_SINCE_AGENT)) {
        return fail('KILN_PROTOCOL_VERSION', `the agent of ${req.instanceId} is version ${version}, which serves no logs (agents from ${LOGS_SINCE_AGENT} on do): replace the instance (kiln heal, or a bake) to update its agent`);
      }
      const timer = setTimeout(() => {
        o.hub.send(req.instanceId, { type: 'log-stop', id });
        end(id, { code: 'KILN_AGENT_TIMEOUT', message: `the agent of ${req.instanceId} did not answer the log request within ${(o.startTimeoutMs ?? START_TIMEOUT_MS) / 1000} s` });
      }, o.startTimeoutMs ?? START_TIMEOUT_MS);
      streams.set(id, { instanceId: req.instanceId, handlers, timer });
      if (!o.hub.send(req.instanceId, { type: 'log-request', id, ...(req.process ? { process: req.process } : {}), lines: req.lines, follow: req.follow })) {
        end(id, { code: 'KILN_AGENT_NOT_CONNECTED', message: `the agent of ${req.instanceId} is not connected to this controller` });
      }
      log.debug({ id, instanceId: req.instanceId, follow: req.follow }, 'log stream opened');
      return () => {
        const s = streams.get(id);
        if (!s) return;
        streams.delete(id);
        clearTimeout(s.timer);
        o.hub.send(req.instanceId, { type: 'log-stop', id });
      };
    },
    close() {
      for (const [id, s] of streams) {
        clearTimeout(s.timer);
        o.hub.send(s.instanceId, { type: 'log-stop', id });
      }
      streams.clear();
      o.hub.off('logs', onLogs);
      o.hub.off('connection', onConnection);
    },
  };
}
