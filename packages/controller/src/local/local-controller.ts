import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { createS3Client, ifMissing, loadPrivateKey, loadPublicKeys, pollUntil, type Logger, type PrivateKey, type PublicKey, type S3Location } from '@kiln/shared';
import type { Provider } from '../providers/provider.js';
import type { LocalBalancer } from '../balancers/balancer.js';
import { AGENTS_PATH, buildServer, type KilnServer } from '../server/server.js';

export interface LocalControllerOptions {
  log: Logger;
  s3: S3Location;
  operatorToken: string;
  /** `.kiln/keys`: release.key signs the pointers deployments move, every *.pub is trusted */
  keyDir: string;
  /** 0 picks a free port */
  port: number;
  tls?: { certFile: string; keyFile: string };
  /** how often the key directory is looked at (default 1 s) */
  keyPollMs?: number;
  /** bake, relaunch, heal: the provider and the secret fleets' agent credentials derive from */
  launch?: { provider: Provider; agentSecret: Buffer; serviceManager: 'process' | 'systemd' };
  /** told when the keys changed and the controller restarted with them */
  onKeys?: (keys: KeyState) => void;
  /** HAProxy in front of the fleets on the provider (it outlives a restart of the server) */
  balancer?: LocalBalancer;
}

export interface KeyState {
  signingKey: PrivateKey | undefined;
  trustedKeys: PublicKey[];
}

export interface LocalController {
  url: string;
  agentsUrl: string;
  keys: KeyState;
  /** every running instance of each fleet's live group (back) in the balancer */
  restoreTraffic(): Promise<void>;
  close(): Promise<void>;
}

/** What the key directory holds now, as a string that changes when a key file is added, removed or rewritten. */
async function keyDirStamp(dir: string): Promise<string> {
  const names = (await ifMissing(readdir(dir), [])).filter((f) => f === 'release.key' || f.endsWith('.pub')).sort();
  const stamps = await Promise.all(
    names.map(async (n) => {
      const s = await ifMissing(stat(path.join(dir, n)), undefined); // removed since the readdir
      return s ? `${n}:${s.size}:${s.mtimeMs}` : n;
    }),
  );
  return stamps.join('|');
}

async function loadKeys(dir: string): Promise<KeyState> {
  const names = await ifMissing(readdir(dir), [] as string[]);
  const pubs = names.filter((f) => f.endsWith('.pub')).map((f) => path.join(dir, f));
  return {
    signingKey: names.includes('release.key') ? await loadPrivateKey(path.join(dir, 'release.key')) : undefined,
    trustedKeys: pubs.length ? await loadPublicKeys(pubs) : [],
  };
}

/**
 * The controller `kiln up` runs: buildServer on 127.0.0.1 over the local bucket. Keys made after it
 * started (`kiln keys generate` in another terminal) are picked up: the server is rebuilt on the same
 * port once no deployment runs, and agents reconnect by themselves.
 */
export async function startLocalController(opts: LocalControllerOptions): Promise<LocalController> {
  const log = opts.log.child({ module: 'local-controller' });
  const https = opts.tls ? { cert: await readFile(opts.tls.certFile), key: await readFile(opts.tls.keyFile) } : undefined;
  let stamp = await keyDirStamp(opts.keyDir);
  let keys = await loadKeys(opts.keyDir);
  let port = opts.port;

  async function start(): Promise<KilnServer> {
    const server = await buildServer({
      log: opts.log,
      s3: createS3Client(opts.s3),
      bucket: opts.s3.bucket,
      prefix: opts.s3.prefix,
      operatorTokens: [opts.operatorToken],
      ...(keys.signingKey ? { signingKey: keys.signingKey } : {}),
      trustedKeys: keys.trustedKeys,
      ...(https ? { https } : {}),
      ...(opts.launch ? { launch: { ...opts.launch, s3: opts.s3 } } : {}),
      ...(opts.balancer ? { balancers: { local: opts.balancer } } : {}),
    });
    try {
      await server.listen({ host: '127.0.0.1', port });
    } catch (err) {
      // a port taken: what buildServer started (the hub's timers, resumed rollouts) must not keep kiln up alive
      await server.close().catch((closeErr: unknown) => log.warn({ err: closeErr }, 'cannot close the controller that did not listen'));
      throw err;
    }
    port = (server.server.address() as { port: number }).port;
    return server;
  }

  let server = await start();
  let busy = false;
  const poll = setInterval(() => {
    if (busy) return;
    busy = true;
    void (async () => {
      const now = await keyDirStamp(opts.keyDir);
      if (now === stamp) return;
      // A rollout in flight would be interrupted by the rebuild: wait for it.
      if ((await server.kiln.deployments.list()).some((d) => d.state === 'running')) return;
      // A half-written key fails to load; it changes again when complete, and is read again then.
      stamp = now;
      keys = await loadKeys(opts.keyDir);
      log.info({ signingKey: keys.signingKey?.keyId, trusted: keys.trustedKeys.map((k) => k.keyId) }, 'release keys changed: restarting the controller with them');
      await server.close();
      server = await start();
      opts.onKeys?.(keys);
    })()
      .catch((err) => log.error({ err }, 'cannot reload the release keys; the controller keeps the ones it has'))
      .finally(() => (busy = false));
  }, opts.keyPollMs ?? 1_000);

  const scheme = https ? 'https' : 'http';
  return {
    url: `${scheme}://127.0.0.1:${port}`,
    agentsUrl: `${scheme === 'https' ? 'wss' : 'ws'}://127.0.0.1:${port}${AGENTS_PATH}`,
    get keys() {
      return keys;
    },
    restoreTraffic: () => server.kiln.restoreTraffic(),
    async close() {
      clearInterval(poll);
      await pollUntil({ check: () => !busy, timeoutMs: Infinity, intervalMs: 20 });
      await server.close();
    },
  };
}
