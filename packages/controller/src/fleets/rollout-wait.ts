import type { AgentReport, CommandAction, CommandResult } from '@kiln/shared';
import type { AgentHub, HubInstance } from './agent-hub.js';
import { versionAtLeast } from './log-streams.js';

/** Agents from this version on run fleet configs; an older one would refuse a command that binds one as an unknown field. */
export const CONFIG_SINCE_AGENT = '0.3.0';
/** Agents from this version on read release format 2 (contents by sha256); an older one cannot parse its manifest. */
export const DELTA_SINCE_AGENT = '0.4.0';

/** What an instance should run: a release, and the config bound to it (null: none; absent: any). */
export interface Wanted {
  manifestSha256: string;
  config?: { sha256: string } | null;
  /** the release's format, when known: format 2 is sent only to agents from DELTA_SINCE_AGENT on */
  format?: 1 | 2 | undefined;
}

export interface WaitTarget {
  instanceId: string;
  commandId: string;
  app: string;
  action: CommandAction;
  /** healthy means this manifest installed (with this config), the app running, nothing in progress */
  want: Wanted;
  timeoutMs: number;
}

/** ok: the instance is where it should be; `result`, the agent's result of the command `run` sent (absent for `until`). */
export type WaitOutcome = { ok: true; result?: CommandResult } | { ok: false; code: string; message: string };

export interface RolloutWaiter {
  /**
   * Sends the command (again on every reconnect: commands are idempotent by id) and resolves once
   * the agent reports the release installed and healthy, reports a failure, or the timeout passes.
   */
  run(t: WaitTarget): Promise<WaitOutcome>;
  /**
   * Resolves with what `test` says once it says something (checked now and on every report,
   * result and connection of the instance), or as KILN_AGENT_TIMEOUT with `late`'s words; once
   * `signal` aborts, at once as not ok (KILN_INTERRUPTED), its timer and listener gone.
   */
  until(instanceId: string, test: (inst: HubInstance | undefined) => WaitOutcome | undefined, timeoutMs: number, late: (inst: HubInstance | undefined) => string, signal?: AbortSignal): Promise<WaitOutcome>;
  /** the controller is stopping: every wait, running or later, resolves at once as not ok */
  close(): void;
}

/** Installed this manifest, running with the config wanted (if any), the app running, nothing in progress. */
export const healthyOn = (r: AgentReport | null, want: Wanted) =>
  !!r && r.installed?.manifestSha256 === want.manifestSha256 && (want.config === undefined || (r.config?.sha256 ?? null) === (want.config?.sha256 ?? null)) && r.service.active && r.operation === null;

/**
 * Why the instance's agent cannot take `action`, or undefined: one binding a config, to an agent older
 * than configs; a release of format 2, to an agent older than format 2 (it would fail on the manifest,
 * after its channel pointer moved: refused here, before anything is sent).
 */
function tooOld(inst: HubInstance | undefined, action: CommandAction, want: Wanted): string | undefined {
  const version = inst?.report?.agentVersion;
  if (action.kind === 'report' || !version) return undefined;
  if (action.config !== undefined && !versionAtLeast(version, CONFIG_SINCE_AGENT)) {
    return `${inst!.instanceId} runs agent ${version}, older than ${CONFIG_SINCE_AGENT}: it cannot run a fleet config; replace it with an instance of a newer image (a bake or relaunch)`;
  }
  if (want.format === 2 && !versionAtLeast(version, DELTA_SINCE_AGENT)) {
    const release = action.version ? `release ${action.version} is` : 'the release is';
    return `${inst!.instanceId} runs agent ${version}, older than ${DELTA_SINCE_AGENT}: ${release} of format 2, which it cannot read; replace the instance with one of an image with a newer agent (a bake or relaunch), or push the release again with \`kiln release push --format 1\` (under a new version) and deploy that`;
  }
  return undefined;
}

/** One set of hub listeners for every instance a rollout waits on (a thousand waits cost one lookup per event). */
export function createRolloutWaiter(hub: AgentHub): RolloutWaiter {
  const waits = new Map<string, Set<() => void>>();
  const poke = (instanceId: string) => waits.get(instanceId)?.forEach((check) => check());
  hub.on('report', poke);
  hub.on('result', poke);
  hub.on('connection', poke);
  const stopping: WaitOutcome = { ok: false, code: 'KILN_AGENT_UNREACHABLE', message: 'the controller is stopping' };
  const calledOff: WaitOutcome = { ok: false, code: 'KILN_INTERRUPTED', message: 'the wait was called off' };
  const open = new Set<(o: WaitOutcome) => void>();
  let closed = false;

  const until: RolloutWaiter['until'] = (instanceId, test, timeoutMs, late, signal) => {
    if (closed) return Promise.resolve(stopping);
    if (signal?.aborted) return Promise.resolve(calledOff);
    return new Promise<WaitOutcome>((resolve) => {
      const onAbort = () => finish(calledOff);
      const finish = (o: WaitOutcome) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        open.delete(finish);
        const set = waits.get(instanceId);
        set?.delete(check);
        if (set?.size === 0) waits.delete(instanceId);
        resolve(o);
      };
      open.add(finish);
      const check = () => {
        const outcome = test(hub.get(instanceId));
        if (outcome) finish(outcome);
      };
      const timer = setTimeout(() => finish({ ok: false, code: 'KILN_AGENT_TIMEOUT', message: late(hub.get(instanceId)) }), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (!waits.has(instanceId)) waits.set(instanceId, new Set());
      waits.get(instanceId)!.add(check);
      check();
    });
  };

  return {
    run(t) {
      let sentTo: string | undefined; // the connection time the command went out on
      return until(
        t.instanceId,
        (inst) => {
          const old = tooOld(inst, t.action, t.want);
          if (old) return { ok: false, code: 'KILN_PROTOCOL_VERSION', message: old };
          if (inst?.connected && sentTo !== inst.connectedAt) {
            if (hub.command(t.instanceId, t.commandId, t.app, t.action)) sentTo = inst.connectedAt;
          }
          const result = inst?.results.get(t.commandId);
          if (result?.outcome === 'failed' || result?.outcome === 'interrupted') {
            return { ok: false, code: result.error?.code ?? 'KILN_INSTALL_FAILED', message: result.error?.message ?? `the command was ${result.outcome}` };
          }
          return result && healthyOn(inst!.report, t.want) ? { ok: true, result } : undefined;
        },
        t.timeoutMs,
        (inst) => `${t.instanceId} ${!inst?.connected ? 'is not connected' : inst.results.has(t.commandId) ? 'did not report the release healthy' : 'did not answer the command'} within ${t.timeoutMs} ms`,
      );
    },
    until,
    close() {
      closed = true;
      for (const finish of [...open]) finish(stopping);
      hub.off('report', poke);
      hub.off('result', poke);
      hub.off('connection', poke);
    },
  };
}
