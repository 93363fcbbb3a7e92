import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, createS3Client, writeFileAtomic, type Logger, type S3Location } from '@kiln/shared';
import { ListBucketsCommand } from '@aws-sdk/client-s3';
import { localControllerFile, readLocalController, type LocalController as LocalControllerFile } from './api-client.js';
import type { CommandDef } from './cli-command.js';
import { defaultKeyDir, localS3File, out, str, type CliContext, type Flags } from './cli-context.js';
import { startEmbeddedS3, type EmbeddedS3 } from './embedded-s3.js';
import { startLocalController, type KeyState, type LocalController } from './local-controller.js';
import { kilnCacheDir } from './nspawn-rootfs.js';
import { createNspawnProvider } from './provider-nspawn.js';
import { createProcessProvider } from './provider-process.js';

/** What of a previous `kiln up` in this home still answers, if anything. */
async function alreadyRunning(home: string): Promise<string | undefined> {
  try {
    const loc = JSON.parse(await readFile(localS3File(home), 'utf8')) as S3Location;
    await createS3Client(loc, { maxAttempts: 1, connectTimeoutMs: 500 }).send(new ListBucketsCommand({}));
    return `a local S3 at ${loc.endpoint}`;
  } catch {
    // not running: look at the controller
  }
  const ctl = await readLocalController(home).catch(() => undefined);
  if (!ctl || ctl.url.startsWith('https:')) return undefined;
  const res = await fetch(`${ctl.url}/v1/health`, { signal: AbortSignal.timeout(500) }).catch(() => undefined);
  return res?.ok ? `a controller at ${ctl.url}` : undefined;
}

function portFlag(flags: Flags, name: string): number {
  const v = str(flags, name);
  if (v === undefined) return 0;
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new KilnError('KILN_USAGE', `--${name} ${v}: a port number (0 for a free one)`);
  return Number(v);
}

function tlsFlags(ctx: CliContext, flags: Flags): { certFile: string; keyFile: string } | undefined {
  const cert = str(flags, 'tls-cert');
  const key = str(flags, 'tls-key');
  if (!cert !== !key) throw new KilnError('KILN_USAGE', 'TLS needs both --tls-cert FILE and --tls-key FILE');
  return cert && key ? { certFile: path.resolve(ctx.io.cwd, cert), keyFile: path.resolve(ctx.io.cwd, key) } : undefined;
}

const describeKeys = (k: KeyState) =>
  k.signingKey
    ? `signing key ${k.signingKey.keyId}; trusting ${k.trustedKeys.map((p) => p.keyId).join(', ') || 'no key'}`
    : 'none yet: deployments are refused until `kiln keys generate` (picked up without a restart)';

export const upCommand: CommandDef = {
  name: 'up',
  summary: 'run the controller and an embedded S3 endpoint on 127.0.0.1 (stays in the foreground)',
  usage: 'up [--port N] [--s3-port N] [--data DIR] [--bucket NAME] [--tls-cert FILE --tls-key FILE]',
  details:
    'The controller keeps its state in the bucket; kiln commands run in the same directory find both\n' +
    'through .kiln/controller.json and .kiln/s3.json. The operator token is made on the first start and kept\n' +
    'in .kiln/controller.json (0600). Release keys in .kiln/keys are used when present, also when made later.\n' +
    'Stop it with Ctrl-C.',
  options: {
    port: { type: 'string', value: 'N', help: "the controller's port (default: a free one)" },
    's3-port': { type: 'string', value: 'N', help: "the S3 endpoint's port (default: a free one)" },
    data: { type: 'string', value: 'DIR', help: 'where objects are kept (default .kiln/s3)' },
    bucket: { type: 'string', value: 'NAME', help: 'the bucket to create (default "kiln")' },
    'tls-cert': { type: 'string', value: 'FILE', help: 'serve https and wss with this PEM certificate (with --tls-key)' },
    'tls-key': { type: 'string', value: 'FILE', help: "the certificate's PEM private key" },
    provider: { type: 'string', value: 'NAME', help: 'where fleets launch instances: process (default; .kiln/process) or nspawn (root, Linux: real systemd machines; .kiln/nspawn)' },
  },
  positionals: [0, 0],
  async run(ctx, flags) {
    const port = portFlag(flags, 'port');
    const s3Port = portFlag(flags, 's3-port');
    const tls = tlsFlags(ctx, flags);
    const provider = str(flags, 'provider') ?? 'process';
    if (provider !== 'process' && provider !== 'nspawn') throw new KilnError('KILN_USAGE', `--provider ${provider}: process or nspawn (ec2 needs a controller agents can reach: see docs/providers.md)`);
    const running = await alreadyRunning(ctx.home);
    if (running) throw new KilnError('KILN_USAGE', `${running} already runs for ${ctx.home}; stop it first`);
    const stack = await startLocalStack({
      home: ctx.home,
      log: ctx.log,
      dataDir: path.resolve(ctx.io.cwd, str(flags, 'data') ?? path.join(ctx.home, 's3')),
      bucket: str(flags, 'bucket') ?? 'kiln',
      port,
      s3Port,
      provider,
      ...(tls ? { tls } : {}),
      onKeys: (k) => out(ctx, `release keys changed: ${describeKeys(k)}`),
    });
    const { s3, ctl, operatorToken, ctlFile, s3File } = stack;
    out(
      ctx,
      [
        `kiln controller   ${ctl.url}`,
        `agents connect to ${ctl.agentsUrl} (with their fleet's credential: \`kiln fleet create\` prints it)`,
        `operator token    ${operatorToken}`,
        `release keys      ${describeKeys(ctl.keys)}`,
        `provider          ${provider}: images and instances under ${path.join(ctx.home, provider)} (\`kiln images\`, \`kiln instances\`)`,
        `S3 endpoint       ${s3.location.endpoint}`,
        `bucket            ${s3.location.bucket}`,
        `S3 credentials    ${s3.location.accessKeyId} / ${s3.location.secretAccessKey} (local only)`,
        `written to        ${ctlFile} and ${s3File}: kiln commands in this directory use them;`,
        `                  elsewhere set KILN_CONTROLLER=${ctl.url} KILN_TOKEN=<the token>`,
        'press Ctrl-C to stop',
      ].join('\n'),
    );
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await stack.close();
    out(ctx, 'stopped');
  },
};

export interface LocalStack {
  s3: EmbeddedS3;
  ctl: LocalController;
  operatorToken: string;
  ctlFile: string;
  s3File: string;
  /** the controller first (it stops its rollouts and says goodbye to the agents while S3 still answers), then S3 */
  close(): Promise<void>;
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
  tls?: { certFile: string; keyFile: string };
  onKeys?: (k: KeyState) => void;
}): Promise<LocalStack> {
  const previous = await readLocalController(o.home).catch(() => undefined);
  const operatorToken = previous?.operatorToken ?? `kfo_${randomBytes(24).toString('base64url')}`;
  const s3 = await startEmbeddedS3({ directory: o.dataDir, bucket: o.bucket, port: o.s3Port });
  const s3File = localS3File(o.home);
  const ctlFile = localControllerFile(o.home);
  let ctl;
  try {
    await writeFileAtomic(s3File, JSON.stringify(s3.location, null, 2) + '\n', 0o600);
    ctl = await startLocalController({
      log: o.log,
      s3: s3.location,
      operatorToken,
      keyDir: defaultKeyDir(o.home),
      port: o.port,
      ...(o.tls ? { tls: o.tls } : {}),
      launch: o.provider === 'nspawn'
        ? { provider: createNspawnProvider({ dir: path.join(o.home, 'nspawn'), cacheDir: kilnCacheDir(process.env.KILN_CACHE_DIR), log: o.log }), agentSecret: await agentSecret(o.home), serviceManager: 'systemd' }
        : { provider: await processProvider(path.join(o.home, 'process'), o.log), agentSecret: await agentSecret(o.home), serviceManager: 'process' },
      ...(o.onKeys ? { onKeys: o.onKeys } : {}),
    });
  } catch (err) {
    await rm(s3File, { force: true });
    await s3.close();
    throw err;
  }
  const local: LocalControllerFile = { url: ctl.url, agentsUrl: ctl.agentsUrl, operatorToken, ...(o.tls ? { ca: o.tls.certFile } : {}) };
  await writeFileAtomic(ctlFile, JSON.stringify(local, null, 2) + '\n', 0o600);
  return {
    s3,
    ctl,
    operatorToken,
    ctlFile,
    s3File,
    async close() {
      await ctl.close();
      await rm(s3File, { force: true });
      await s3.close();
    },
  };
}

/**
 * The secret the controller derives fleets' agent credentials from, so the instances it launches get
 * theirs without the controller storing them. Made on the first start, kept in .kiln/agent-secret (0600).
 */
async function agentSecret(home: string): Promise<Buffer> {
  const file = path.join(home, 'agent-secret');
  const have = await readFile(file, 'utf8').catch(() => undefined);
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
