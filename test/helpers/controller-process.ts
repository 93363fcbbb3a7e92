import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OPERATOR, apiClient, type TestController } from './controller.js';
import { FAST_CONTROLLER_HEARTBEAT_MS } from './fast-agent.js';
import type { Keys } from './release.js';
import type { S3Fixture } from './s3.js';

const MAIN = fileURLToPath(new URL('./controller-main.mjs', import.meta.url));

export interface ControllerProcess {
  url: string;
  port: number;
  agentsUrl: string;
  api: TestController['api'];
  /** kills the process (SIGKILL by default) and waits for it to exit */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * A real controller (buildServer) in a child process, so that a test can SIGKILL it mid-rollout: on a
 * port the kernel picks, or on `port` (where a killed one comes back).
 */
export async function startControllerProcess(args: { s3: S3Fixture; keys: Keys; port?: number; dir: string }): Promise<ControllerProcess> {
  const file = path.join(args.dir, 'controller.json');
  const options = { s3: args.s3.s3.location, operatorToken: OPERATOR, privatePem: args.keys.privatePem, publicPem: args.keys.publicPem, port: args.port ?? 0, heartbeatMs: FAST_CONTROLLER_HEARTBEAT_MS };
  await writeFile(file, JSON.stringify(options), { mode: 0o600 });
  const child = spawn(process.execPath, [MAIN, file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } });
  const exited = once(child, 'exit');
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let stdout = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the controller process did not start within 45 s: ${stderr}`)), 45_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      const listening = /^listening (\d+)$/m.exec(stdout);
      if (listening) (clearTimeout(timer), resolve(Number(listening[1])));
    });
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`the controller process exited with ${code}: ${stderr}`))));
  }).catch((err) => {
    // A controller that never said it listens must not outlive the test.
    child.kill('SIGKILL');
    throw err;
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    agentsUrl: `ws://127.0.0.1:${port}/v1/agents`,
    api: apiClient(url),
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}
