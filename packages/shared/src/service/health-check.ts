import { spawn } from 'node:child_process';
import { KilnError } from '../errors/kiln-error.js';
import { pollUntil } from '../system/poll-until.js';
import type { HealthSpec, ServiceSpec } from '../release/release-schema.js';

export interface HealthOptions {
  health: HealthSpec;
  service: ServiceSpec;
  /** the port the app was given (an instance may override the manifest's) */
  port?: number | undefined;
  cwd: string;
}

async function probeHttp(url: string, timeoutMs: number): Promise<string | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.ok ? undefined : `HTTP ${res.status}`;
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    return cause?.code ?? (err as Error).message;
  }
}

function probeCommand(command: string[], cwd: string, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const child = spawn(command[0]!, command.slice(1), { cwd, stdio: 'ignore', timeout: timeoutMs });
    child.on('error', (err) => resolve(err.message));
    child.on('exit', (code, signal) => resolve(code === 0 ? undefined : `exit ${code ?? signal}`));
  });
}

/** Polls the release's health check until it passes or its timeout ends (KILN_HEALTH_FAILED). */
export async function waitHealthy(opts: HealthOptions): Promise<void> {
  const { health } = opts;
  if (health.type === 'none') return;
  const deadline = Date.now() + health.timeoutMs;
  let url: string | undefined;
  if (health.type === 'http') {
    const port = health.port ?? opts.port ?? opts.service.port;
    if (!port) throw new KilnError('KILN_HEALTH_FAILED', 'the HTTP health check has no port: set health.port or service.port');
    url = `http://127.0.0.1:${port}${health.path}`;
  }
  let last = 'not checked';
  await pollUntil({
    check: async () => {
      const perTry = Math.max(50, Math.min(2_000, deadline - Date.now()));
      const problem = url ? await probeHttp(url, perTry) : await probeCommand((health as { command: string[] }).command, opts.cwd, perTry);
      last = problem ?? last;
      return problem === undefined;
    },
    // No check starts whose pause would already end past the deadline.
    timeoutMs: health.timeoutMs - health.intervalMs,
    intervalMs: health.intervalMs,
    timeoutError: () => new KilnError('KILN_HEALTH_FAILED', `health check ${url ?? (health as { command: string[] }).command.join(' ')} did not pass within ${health.timeoutMs} ms (last: ${last})`),
  });
}
