import type { ReleaseStore } from '@kiln/shared';
import { pushApp, type Keys } from './release.js';

/**
 * An app that shows the fleet config it runs with: it answers with its environment, and refuses to
 * start (exit 3) when its config names its own port in CRASH_ON_PORT, as an app refuses a bad config.
 */
const SERVER = `
const http = require('node:http');
if (process.env.CRASH_ON_PORT && process.env.CRASH_ON_PORT === process.env.PORT) {
  console.log('refusing to start: this config says to (CRASH_ON_PORT)');
  process.exit(3);
}
const server = http.createServer((req, res) => res.end(req.url === '/healthz' ? 'ok' : JSON.stringify(process.env))).listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
`;

const SPEC = { service: { command: ['node', 'server.js'], port: 8080 }, health: { type: 'http', path: '/healthz', timeoutMs: 5_000, intervalMs: 50 } };

/** Publishes that app at `version`. */
export const pushConfigApp = (args: { store: ReleaseStore; keys: Keys; version: string }) => pushApp({ ...args, extra: { 'server.js': SERVER }, kilnJson: SPEC });

/** The environment the app at `address` runs with, or undefined when nothing answers there. */
export async function appEnv(address: string): Promise<Record<string, string> | undefined> {
  const res = await fetch(address, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
  return res?.ok ? ((await res.json()) as Record<string, string>) : undefined;
}
