import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { AGENT_VERSION, NONCE_HEADER, PROTOCOL_VERSION, proveIdentity, type AgentReport, type CommandResult } from '@kiln/shared';
import type WebSocket from 'ws';

/**
 * What a hand-made agent client needs to say hello as a real agent does: a key pair of its own (a
 * real agent keeps one under its root), the nonce of its connection, and a hello signing it.
 */
export const agentKey = (): KeyObject => generateKeyPairSync('ed25519').privateKey;

/** Resolves once the socket is open, with the nonce the controller's upgrade answer carried (`X-Kiln-Nonce`). */
export function nonceOf(ws: WebSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let nonce = '';
    // 'open' follows 'upgrade' in the same turn: both listeners are in place before either fires.
    ws.once('upgrade', (res) => (nonce = String(res.headers[NONCE_HEADER] ?? '')));
    ws.once('open', () => resolve(nonce));
    ws.once('close', () => reject(new Error('closed before it opened')));
    ws.once('error', reject);
  });
}

/** A hello as an agent sends it: signed with `key` over this connection's nonce for `instanceId` (the connection's, which the report may contradict). */
export function helloFrame(a: { key: KeyObject; nonce: string; instanceId: string; report: AgentReport; results?: CommandResult[] }): string {
  return JSON.stringify({ v: PROTOCOL_VERSION, type: 'hello', identity: proveIdentity(a.key, a.nonce, a.instanceId), report: a.report, results: a.results ?? [] });
}

/** A report built by hand, as an agent of this workspace's version would send it (nothing installed, unless `over` says so). */
export function handReport(instanceId: string, over: Partial<AgentReport> = {}): AgentReport {
  const at = new Date().toISOString();
  return {
    instanceId,
    imageId: 'img-raw',
    app: 'web',
    channel: 'stable',
    agentVersion: AGENT_VERSION,
    image: null,
    installed: null,
    config: null,
    service: { active: true },
    tree: { status: 'unchecked', modified: 0, missing: 0, extra: 0, paths: [], checkedAt: null },
    operation: null,
    lastError: null,
    queued: 0,
    at,
    ...over,
  };
}
