import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createLogger,
  generateReleaseKeyPair,
  parsePrivateKey,
  parsePublicKey,
  promoteRelease,
  publishRelease,
  type Logger,
  type PrivateKey,
  type PublicKey,
  type ReleaseStore,
} from '@kiln/shared';

export { freePort } from '@kiln/controller';

export const DEMO_APP = fileURLToPath(new URL('../../packages/controller/demo-app/', import.meta.url));

export interface Keys {
  key: PrivateKey;
  keys: PublicKey[];
  privatePem: string;
  publicPem: string;
}

export function makeKeys(): Keys {
  const pair = generateReleaseKeyPair();
  return { key: parsePrivateKey(pair.privatePem, 'test'), keys: [parsePublicKey(pair.publicPem, 'test')], privatePem: pair.privatePem, publicPem: pair.publicPem };
}

/** A logger that keeps quiet unless KILN_TEST_LOG is set. */
export function quietLog(): Logger {
  return createLogger({ level: process.env.KILN_TEST_LOG ?? 'silent' });
}

export async function tempDir(prefix = 'kiln-test-'): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}


/** A copy of the demo HTTP app that answers with `version`; extra files may be added. */
export async function makeApp(version: string, extra: Record<string, string | Buffer> = {}, kilnJson?: unknown): Promise<string> {
  const dir = await tempDir('kiln-test-app-');
  await cp(DEMO_APP, dir, { recursive: true });
  await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
  if (kilnJson !== undefined) await writeFile(path.join(dir, 'kiln.json'), JSON.stringify(kilnJson));
  for (const [name, data] of Object.entries(extra)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), data);
  }
  return dir;
}

/** kiln.json of the demo app whose health check waits for the file `gate`: an install held at its health step until a test creates it. */
export function gatedSpec(gate: string) {
  return { service: { command: ['node', 'server.js'], port: 8080 }, health: { type: 'command', command: ['test', '-e', gate], timeoutMs: 30_000, intervalMs: 50 } };
}

/** Publishes (and optionally promotes) the demo app at `version`. */
export async function pushApp(args: { store: ReleaseStore; keys: Keys; app?: string; version: string; channel?: string; extra?: Record<string, string | Buffer>; kilnJson?: unknown }) {
  const dir = await makeApp(args.version, args.extra, args.kilnJson);
  try {
    const app = args.app ?? 'web';
    const res = await publishRelease({ store: args.store, app, version: args.version, source: dir, key: args.keys.key, log: quietLog() });
    if (args.channel) await promoteRelease({ store: args.store, app, version: args.version, channel: args.channel, key: args.keys.key, keys: args.keys.keys, ttlMs: 3_600_000 });
    return res;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every file or directory under `dir` whose name marks it temporary or staging. */
export async function leftovers(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.name.includes('.kiln-tmp-') || e.name.includes('.stale-') || e.name === 'journal.json' || e.name === 'install.lock') found.push(p);
      if (e.isDirectory() && e.name === 'staging') {
        const inside = await readdir(p);
        if (inside.length) found.push(...inside.map((n) => path.join(p, n)));
        continue;
      }
      if (e.isDirectory() && e.name !== 'releases') await walk(p);
    }
  };
  await walk(dir);
  return found;
}
