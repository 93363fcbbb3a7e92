import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, ifKilnError, ifMissing, isKilnError, writeFileAtomic, type Logger } from '@kiln/shared';
import { startEmbeddedS3, type EmbeddedS3 } from './embedded-s3.js';
import { startLocalController, type KeyState, type LocalController } from './local-controller.js';
import { defaultKeyDir, localControllerFile, localS3File, readLocalController, type LocalController as LocalControllerFile } from './local-files.js';
import { kilnCacheDir } from '../providers/nspawn/nspawn-rootfs.js';
import { createNspawnProvider } from '../providers/nspawn/nspawn-provider.js';
import { createProcessProvider } from '../providers/process/process-provider.js';
import type { Provider } from '../providers/provider.js';
import { startHaproxy, type Haproxy } from '../balancers/haproxy-process.js';

export interface LocalStack {
  s3: EmbeddedS3;
  ctl: LocalController;
  operatorToken: string;
  ctlFile: string;
  s3File: string;
  /** where fleets launch instances */
  provider: Provider;
  /** the HAProxy in front of the fleets, when one runs */
  haproxy?: Haproxy;
  /** one line on the balancer: its pid, or why deployments are not drained */
  balancerNote: string;
  /**
   * The controller first (it stops its rollouts and says goodbye to the agents while S3 still
   * answers), then S3; HAProxy only with `balancer` (else it goes on serving the fleets, which keep
   * running, until `kiln down` or the next `kiln up` takes it over).
   */
  close(opts?: { balancer?: boolean }): Promise<void>;
}

/**
 * What `kiln up` runs, also for `kiln demo`: the embedded S3, the controller with the process
 * provider, and the files in HOME that point the CLI at them.
 */
export async function startLocalStack(o: {
  home: string;
  log: Logger;
  dataDir: string;
  bucket: string;
  port: number;
  s3Port: number;
  /** where fleets launch instances (default process) */
  provider?: 'process' | 'nspawn';
  /** the nspawn provider's cache of Debian trees (default ~/.cache/kiln) */
  cacheDir?: string;
  tls?: { certFile: string; keyFile: string };
  onKeys?: (k: KeyState) => void;
  /** the haproxy program to put in front of the fleets (findHaproxy); none: deployments are not drained */
  haproxy?: string;
}): Promise<LocalStack> {
  // A controller.json that does not parse is replaced, with a new operator token.
  const previous = await ifKilnError(readLocalController(o.home), ['KILN_CONFIG_INVALID'], undefined);
  const operatorToken = previous?.operatorToken ?? `kfo_${randomBytes(24).toString('base64url')}`;
  const s3 = await startEmbeddedS3({ directory: o.dataDir, bucket: o.bucket, port: o.s3Port }).catch((err: unknown) => {
    throw portTaken(err, o.s3Port, 'S3 endpoint');
  });
  const s3File = localS3File(o.home);
  const ctlFile = localControllerFile(o.home);
  let ctl;
  let provider: Provider;
  let haproxy: Haproxy | undefined;
  let balancerNote: string;
  try {
    ({ haproxy, balancerNote } = await localBalancer(o.home, o.haproxy, o.log));
    await writeFileAtomic(s3File, JSON.stringify(s3.location, null, 2) + '\n', 0o600);
    provider = o.provider === 'nspawn'
      ? createNspawnProvider({ dir: path.join(o.home, 'nspawn'), cacheDir: o.cacheDir ?? kilnCacheDir(), log: o.log })
      : await processProvider(path.join(o.home, 'process'), o.log);
    ctl = await startLocalController({
      log: o.log,
      s3: s3.location,
      operatorToken,
      keyDir: defaultKeyDir(o.home),
      port: o.port,
      ...(o.tls ? { tls: o.tls } : {}),
      launch: { provider, agentSecret: await agentSecret(o.home), serviceManager: o.provider === 'nspawn' ? 'systemd' : 'process' },
      ...(o.onKeys ? { onKeys: o.onKeys } : {}),
      ...(haproxy ? { balancer: haproxy } : {}),
    });
  } catch (err) {
    await rm(s3File, { force: true });
    await s3.close();
    // HAProxy stays: it may be one an earlier kiln up left serving the fleets (kiln down stops it).
    throw portTaken(err, o.port, 'controller');
  }
  const local: LocalControllerFile = { url: ctl.url, agentsUrl: ctl.agentsUrl, operatorToken, ...(o.tls ? { ca: o.tls.certFile } : {}) };
  await writeFileAtomic(ctlFile, JSON.stringify(local, null, 2) + '\n', 0o600);
  return {
    s3,
    ctl,
    operatorToken,
    ctlFile,
    s3File,
    provider,
    ...(haproxy ? { haproxy } : {}),
    balancerNote,
    async close(opts = {}) {
      await ctl.close();
      await rm(s3File, { force: true });
      await s3.close();
      if (opts.balancer) await haproxy?.close();
    },
  };
}

/** A listen that failed because the port is taken (EADDRINUSE) is KILN_PORT_IN_USE naming the port; anything else as it is. */
function portTaken(err: unknown, port: number, what: 'controller' | 'S3 endpoint'): unknown {
  if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') return err;
  return new KilnError('KILN_PORT_IN_USE', `the ${what} cannot listen on 127.0.0.1:${port}: another process holds it (\`ss -ltnp 'sport = :${port}'\` names it); stop that process or choose another port`, { cause: err, details: { port, what } });
}

/**
 * The secret the controller derives fleets' agent credentials from, so the instances it launches get
 * theirs without the controller storing them. Made on the first start, kept in .kiln/agent-secret (0600).
 */
async function agentSecret(home: string): Promise<Buffer> {
  const file = path.join(home, 'agent-secret');
  const have = await ifMissing(readFile(file, 'utf8'), undefined);
  if (have && /^[0-9a-f]{64}$/.test(have.trim())) return Buffer.from(have.trim(), 'hex');
  const secret = randomBytes(32);
  await writeFileAtomic(file, secret.toString('hex') + '\n', 0o600);
  return secret;
}

/** The process provider with its plain base image made (cheap), so `kiln bake … --from img-base` works from the start. */
async function processProvider(dir: string, log: Logger) {
  const provider = createProcessProvider({ dir, log });
  await provider.defaultImage!();
  return provider;
}

/**
 * HAProxy for the fleets, in `.kiln/haproxy` (it takes over one an earlier `kiln up` left running).
 * One that cannot start leaves kiln running without it: deployments work, undrained, and the note says why.
 */
async function localBalancer(home: string, binary: string | undefined, log: Logger): Promise<{ haproxy?: Haproxy; balancerNote: string }> {
  if (!binary) return { balancerNote: 'none: deployments are not drained (install haproxy, or see `kiln up --help`)' };
  try {
    const haproxy = await startHaproxy({ dir: path.join(home, 'haproxy'), log, binary });
    return { haproxy, balancerNote: `HAProxy (pid ${haproxy.pid}): one frontend per fleet (\`kiln fleet show FLEET\`); every swap is drained` };
  } catch (err) {
    if (!isKilnError(err, 'KILN_BALANCER_FAILED') && !isKilnError(err, 'KILN_PORT_IN_USE')) throw err;
    log.warn({ err }, 'HAProxy could not start: deployments are not drained');
    return { balancerNote: `none: HAProxy could not start (${err.code}: ${err.message}); deployments are not drained` };
  }
}
