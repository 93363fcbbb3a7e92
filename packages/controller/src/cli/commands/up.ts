import path from 'node:path';
import { KilnError, S3Location, createS3Client, peekJsonFile } from '@kiln/shared';
import { ListBucketsCommand } from '@aws-sdk/client-s3';
import type { CommandDef } from '../cli-command.js';
import { out, str, type CliContext, type Flags } from '../cli-context.js';
import type { KeyState } from '../../local/local-controller.js';
import { localS3File, readLocalController } from '../../local/local-files.js';
import { startLocalStack } from '../../local/local-stack.js';
import { kilnCacheDir } from '../../providers/nspawn/nspawn-rootfs.js';

/** What of a previous `kiln up` in this home still answers, if anything. */
async function alreadyRunning(home: string): Promise<string | undefined> {
  const loc = await peekJsonFile(localS3File(home), S3Location);
  // An S3 that does not answer is not running: look at the controller.
  if (loc && (await createS3Client(loc, { maxAttempts: 1, connectTimeoutMs: 500 }).send(new ListBucketsCommand({})).then(() => true, () => false))) return `a local S3 at ${loc.endpoint}`;
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
      cacheDir: kilnCacheDir(ctx.io.env.KILN_CACHE_DIR),
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
