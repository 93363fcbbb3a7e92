import { spawn, type ChildProcess } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { runCli } from '@kiln/controller';
import { OPERATOR, type TestController } from './controller.js';

export const KILN_MAIN = fileURLToPath(new URL('../../packages/controller/dist/main.js', import.meta.url));
export const KILN_AGENT_MAIN = fileURLToPath(new URL('../../packages/agent/dist/main.js', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd?: string;
  env?: Record<string, string>;
}

/** Runs the built `kiln` CLI as a user would: a real child process. */
export const kiln = (args: string[], opts: CliOptions = {}): Promise<CliResult> => finished(startKiln(args, opts));
export const startKiln = (args: string[], opts: CliOptions = {}): ChildProcess => startMain(KILN_MAIN, args, opts);

/**
 * Runs one kiln command in this process: the same runCli the binary runs, its output collected,
 * without a Node start per command (the environment is `opts.env` alone).
 */
export async function kilnHere(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const sink = (add: (d: string) => void) => new Writable({ write: (d, _e, cb) => (add(String(d)), cb()) });
  const io = { stdout: sink((d) => (stdout += d)), stderr: sink((d) => (stderr += d)), env: opts.env ?? {}, cwd: opts.cwd ?? process.cwd() };
  const code = await runCli(args, { io });
  return { code, stdout, stderr };
}

/** kiln commands and API calls of an operator, with everything they printed and answered kept in `seen` (searched for a secret's value). */
export interface OperatorSession {
  seen: string[];
  kiln(...args: string[]): Promise<CliResult>;
  api(method: string, route: string, body?: unknown): Promise<{ status: number; body: any }>;
}

/** An operator's session on the controller `ctl()` returns (one a beforeAll starts), the commands run in `cwd()`. */
export function operatorSession(ctl: () => Pick<TestController, 'url' | 'api'>, cwd: () => string): OperatorSession {
  const seen: string[] = [];
  return {
    seen,
    async kiln(...args) {
      const r = await kilnHere(args, { env: { KILN_CONTROLLER: ctl().url, KILN_TOKEN: OPERATOR }, cwd: cwd() });
      seen.push(r.stdout, r.stderr);
      return r;
    },
    async api(method, route, body) {
      const res = await ctl().api(method, route, body);
      seen.push(JSON.stringify(res.body));
      return res;
    },
  };
}

/** Runs the built `kiln-agent` the same way. */
export const kilnAgent = (args: string[], opts: CliOptions = {}): Promise<CliResult> => finished(startKilnAgent(args, opts));
export const startKilnAgent = (args: string[], opts: CliOptions = {}): ChildProcess => startMain(KILN_AGENT_MAIN, args, opts);

/** Collects a child's output until it exits. */
export function finished(child: ChildProcess): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

function startMain(main: string, args: string[], opts: CliOptions): ChildProcess {
  return spawn(process.execPath, [main, ...args], {
    cwd: opts.cwd ?? process.cwd(),
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** Resolves with the child's stdout so far once it holds `text` (a long runner is ready); rejects if it exits first. */
export function outputHolds(child: ChildProcess, text: string, timeoutMs = 20_000): Promise<string> {
  let stdout = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${text}" within ${timeoutMs} ms; stdout so far: ${stdout}`)), timeoutMs);
    const onData = (d: Buffer) => {
      stdout += d;
      if (!stdout.includes(text)) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.off('exit', onExit);
      resolve(stdout);
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before "${text}"; stdout: ${stdout}`));
    };
    child.stdout!.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Stops a long runner with SIGTERM and waits until it has exited. */
export async function stopKiln(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  child.kill('SIGTERM');
  return closed;
}
