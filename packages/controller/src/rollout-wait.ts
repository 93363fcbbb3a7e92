import type { AgentReport, CommandAction } from '@kiln/shared';
import type { AgentHub } from './agent-hub.js';

export interface WaitTarget {
  instanceId: string;
  commandId: string;
  app: string;
  action: CommandAction;
  /** healthy means this manifest installed, the app running, nothing in progress */
  manifestSha256: string;
  timeoutMs: number;
}

export type WaitOutcome = { ok: true } | { ok: false; code: string; message: string };

export interface RolloutWaiter {
  /**
   * Sends the command (again on every reconnect: commands are idempotent by id) and resolves once
   * the agent reports the release installed and healthy, reports a failure, or the timeout passes.
   */
  run(t: WaitTarget): Promise<WaitOutcome>;
  /** the controller is stopping: every wait, running or later, resolves at once as not ok */
  close(): void;
}

const done = (r: AgentReport | null, sha: string) => !!r && r.installed?.manifestSha256 === sha && r.service.active && r.operation === null;

/** One set of hub listeners for every instance a rollout waits on (a thousand waits cost one lookup per event). */
export function createRolloutWaiter(hub: AgentHub): RolloutWaiter {
  const waits = new Map<string, Set<() => void>>();
  const poke = (instanceId: string) => waits.get(instanceId)?.forEach((check) => check());
  const onReport = (id: string) => poke(id);
  const onResult = (id: string) => poke(id);
  const onConnection = (id: string) => poke(id);
  hub.on('report', onReport);
  hub.on('result', onResult);
  hub.on('connection', onConnection);
  const stopping: WaitOutcome = { ok: false, code: 'KILN_AGENT_UNREACHABLE', message: 'the controller is stopping' };
  const open = new Set<(o: WaitOutcome) => void>();
  let closed = false;

  return {
    run(t) {
      if (closed) return Promise.resolve(stopping);
      return new Promise<WaitOutcome>((resolve) => {
        let sentTo: string | undefined; // the connection time the command went out on
        const finish = (o: WaitOutcome) => {
          clearTimeout(timer);
          open.delete(finish);
          const set = waits.get(t.instanceId);
          set?.delete(check);
          if (set?.size === 0) waits.delete(t.instanceId);
          resolve(o);
        };
        open.add(finish);
        const check = () => {
          const inst = hub.get(t.instanceId);
          if (inst?.connected && sentTo !== inst.connectedAt) {
            if (hub.command(t.instanceId, t.commandId, t.app, t.action)) sentTo = inst.connectedAt;
          }
          const result = inst?.results.get(t.commandId);
          if (result?.outcome === 'failed' || result?.outcome === 'interrupted') {
            return finish({ ok: false, code: result.error?.code ?? 'KILN_INSTALL_FAILED', message: result.error?.message ?? `the command was ${result.outcome}` });
          }
          if (result && done(inst!.report, t.manifestSha256)) finish({ ok: true });
        };
        const timer = setTimeout(() => {
          const inst = hub.get(t.instanceId);
          const why = !inst?.connected ? 'is not connected' : inst.results.has(t.commandId) ? 'did not report the release healthy' : 'did not answer the command';
          finish({ ok: false, code: 'KILN_AGENT_TIMEOUT', message: `${t.instanceId} ${why} within ${t.timeoutMs} ms` });
        }, t.timeoutMs);
        if (!waits.has(t.instanceId)) waits.set(t.instanceId, new Set());
        waits.get(t.instanceId)!.add(check);
        check();
      });
    },
    close() {
      closed = true;
      for (const finish of [...open]) finish(stopping);
      hub.off('report', onReport);
      hub.off('result', onResult);
      hub.off('connection', onConnection);
    },
  };
}
