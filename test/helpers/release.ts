import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
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
  type ReleaseRef,
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

/** A debug-level logger that keeps every line it writes: what a test searches a controller's log for. */
export function keptLog(): { log: Logger; text: () => string } {
  let text = '';
  return { log: createLogger({ level: 'debug', destination: { write: (line: string) => void (text += line) } }), text: () => text };
}

export async function tempDir(prefix = 'kiln-test-'): Promise<string> {
  return mkdtemp(path.join(tmpdir(), prefix));
}

const DEMO_SPEC = JSON.parse(readFileSync(path.join(DEMO_APP, 'kiln.json'), 'utf8')) as { health: object };

/** A copy of the demo HTTP app that answers with `version`; extra files may be added. */
export async function makeApp(version: string, extra: Record<string, string | Buffer> = {}, kilnJson?: unknown): Promise<string> {
  const dir = await tempDir('kiln-test-app-');
  await cp(DEMO_APP, dir, { recursive: true });
  await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
  // The demo app's own kiln.json, with a health timeout of 2 s: a test that fails a health gate waits no longer.
  const spec = kilnJson ?? { ...DEMO_SPEC, health: { ...DEMO_SPEC.health, timeoutMs: 2_000 } };
  await writeFile(path.join(dir, 'kiln.json'), JSON.stringify(spec));
  for (const [name, data] of Object.entries(extra)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), data);
  }
  return dir;
}

/** How the demo app runs (server.js reads PORT; 8080 when run by hand). */
const DEMO_SERVICE = { command: ['node', 'server.js'], port: 8080 };

/** kiln.json of the demo app whose health check waits for the file `gate`: an install held at its health step until a test creates it (or for `timeoutMs`). */
export function gatedSpec(gate: string, timeoutMs = 30_000) {
  return { service: DEMO_SERVICE, health: { type: 'command', command: ['test', '-e', gate], timeoutMs, intervalMs: 50 } };
}

/** kiln.json of the demo app whose health check never passes: an install that fails its health gate after `timeoutMs` and swaps back. */
export function unhealthySpec(timeoutMs: number) {
  return { service: DEMO_SERVICE, health: { type: 'command', command: ['false'], timeoutMs, intervalMs: 100 } };
}

/** Extra files for a big release: `mib` MiB of random bytes (incompressible, so the artifact is as big), in `files` files under blobs/. */
export function incompressible(mib: number, files = 1): Record<string, Buffer> {
  const each = (mib * 1024 * 1024) / files;
  if (files === 1) return { 'blobs/blob.bin': randomBytes(each) };
  return Object.fromEntries(Array.from({ length: files }, (_, i) => [`blobs/blob-${i}.bin`, randomBytes(each)]));
}

export interface PushOptions {
  app?: string;
  /** a channel to promote the release to */
  channel?: string;
  extra?: Record<string, string | Buffer>;
  kilnJson?: unknown;
  /** the release format (default: publishRelease's, 2) */
  format?: 1 | 2;
}

/** Publishes (and optionally promotes) the demo app at `version`. */
export async function pushApp(args: PushOptions & { store: ReleaseStore; keys: Keys; version: string }) {
  const dir = await makeApp(args.version, args.extra, args.kilnJson);
  try {
    const app = args.app ?? 'web';
    const res = await publishRelease({ store: args.store, app, version: args.version, source: dir, key: args.keys.key, log: quietLog(), ...(args.format ? { format: args.format } : {}) });
    if (args.channel) await promoteRelease({ store: args.store, app, version: args.version, channel: args.channel, key: args.keys.key, keys: args.keys.keys, ttlMs: 3_600_000 });
    return res;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The releases most tests start from: 1.0.0 on `stable` (what a host boots into) and 2.0.0 published (what a hotfix moves it to). */
export const STANDARD_RELEASES: Record<string, PushOptions> = { '1.0.0': { channel: 'stable' }, '2.0.0': {} };

/** Publishes the demo app at each version in order (a list, or versions with their options); what a command names each one by. */
export async function pushReleases(args: { store: ReleaseStore; keys: Keys }, versions: string[] | Record<string, PushOptions>): Promise<Record<string, ReleaseRef>> {
  const refs: Record<string, ReleaseRef> = {};
  for (const [version, opts] of Array.isArray(versions) ? versions.map((v) => [v, {}] as const) : Object.entries(versions)) {
    const r = await pushApp({ ...args, ...opts, version });
    refs[version] = { version, seq: r.manifest.seq, manifestSha256: r.manifestSha256 };
  }
  return refs;
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
