import path from 'node:path';
import { KilnError, ifKilnError, isKilnError, isSameProcess, peekJsonFile, processStart } from '@kiln/shared';
import type { CommandDef } from '../cli-command.js';
import { out, str, type CliContext, type Flags } from '../cli-context.js';
import type { KeyState } from '../../local/local-controller.js';
import { LocalUp, localUpFile, readLocalController, writeLocalUp } from '../../local/local-files.js';
import { probeLocalStack } from '../../local/probe-local-stack.js';
import { startLocalStack, type LocalStack } from '../../local/local-stack.js';
import { kilnCacheDir } from '../../providers/nspawn/nspawn-rootfs.js';
import { findHaproxy } from '../../balancers/haproxy-process.js';

/** A `kiln up` that runs for this home is named by its pid; one without a record (an older kiln) by what still answers. */
async function refuseWhenRunning(home: string, last: LocalUp | undefined): Promise<void> {
  if (last && isSameProcess(last.pid, last.start)) {
    throw new KilnError('KILN_ALREADY_RUNNING', `kiln up already runs for ${home}: pid ${last.pid}, controller http://127.0.0.1:${last.port}; stop it with \`kiln down\` (or Ctrl-C where it runs), or start another in a different directory (--home DIR)`);
  }
  const running = await probeLocalStack(home);
  if (running) throw new KilnError('KILN_ALREADY_RUNNING', `${running} already runs for ${home}, started by a kiln that recorded no pid here; stop it where it runs`);
}

function portFlag(flags: Flags, name: string): number | undefined {
  const v = str(flags, name);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new KilnError('KILN_USAGE', `--${name} ${v}: a port number (0 for a free one)`);
  return Number(v);
}

function tlsFlags(ctx: CliContext, flags: Flags): { certFile: string; keyFile: string } | undefined {
  const cert = str(flags, 'tls-cert');
  const key = str(flags, 'tls-key');
  if (!cert !== !key) throw new KilnError('KILN_USAGE', 'TLS needs both --tls-cert FILE and --tls-key FILE');
  return cert && key ? { certFile: path.resolve(ctx.io.cwd, cert), keyFile: path.resolve(ctx.io.cwd, key) } : undefined;
}

type PortSource = 'flag' | 'recorded' | 'free';

/**
 * The ports to listen on: a flag wins; then the last `kiln up`'s here, so that the agents and
 * instances it started, which keep its URLs in their configs, find the controller and S3 again;
 * the controller's also from controller.json (written by kilns that kept no up.json).
 */
async function choosePorts(ctx: CliContext, flags: Flags, last: LocalUp | undefined) {
  const pick = (flag: number | undefined, recorded: number | undefined): { port: number; source: PortSource } =>
    flag !== undefined ? { port: flag, source: 'flag' } : recorded ? { port: recorded, source: 'recorded' } : { port: 0, source: 'free' };
  const ctlFile = last ? undefined : await ifKilnError(readLocalController(ctx.home), ['KILN_CONFIG_INVALID'], undefined);
  const fromCtlFile = ctlFile ? Number(new URL(ctlFile.url).port) || undefined : undefined;
  return { ctl: pick(portFlag(flags, 'port'), last?.port ?? fromCtlFile), s3: pick(portFlag(flags, 's3-port'), last?.s3Port) };
}

/** A recorded port someone else took: what it means for what runs already, and the two ways on. */
function recordedPortTaken(err: KilnError, home: string): KilnError {
  const { port, what } = err.details as { port: number; what: string };
  const flag = what === 'controller' ? '--port' : '--s3-port';
  return new KilnError(
    'KILN_PORT_IN_USE',
    `port ${port}, the ${what}'s at the last kiln up here (${localUpFile(home)}), is taken by another process (\`ss -ltnp 'sport = :${port}'\` names it). ` +
      `The agents and instances started before call that port: stop that process and run kiln up again; or pass ${flag} 0 for a free port and start them again ` +
      '(`kiln agents stop FLEET` and `kiln agents start FLEET`; provider instances: `kiln deploy FLEET VERSION --strategy relaunch`)',
    { cause: err, details: err.details },
  );
}

const portLine = (ctl: { port: number; source: PortSource }, s3: { port: number; source: PortSource }, listening: { ctl: number; s3: number }, file: string) => {
  const both = `controller ${listening.ctl}, S3 ${listening.s3}`;
  if (ctl.source === 'recorded' && s3.source === 'recorded') return `${both}: the last kiln up's here, so agents and instances started before reconnect`;
  const how = (source: PortSource, many: boolean) => (source === 'recorded' ? 'as last time' : source === 'flag' ? 'as given' : many ? 'free ones' : 'a free one');
  const sources = ctl.source === s3.source ? how(ctl.source, true) : `controller ${how(ctl.source, false)}, S3 ${how(s3.source, false)}`;
  return `${both} (${sources}); recorded in ${file}: the next kiln up here listens on the same`;
};

const portOf = (url: string) => Number(new URL(url).port);

/** Instances `kiln down` stopped run again: a `kiln down` then `kiln up` leaves the fleets as they were. */
async function startStopped(ctx: CliContext, stack: LocalStack, ids: string[]): Promise<void> {
  const have = new Set((await stack.provider.describeInstances({})).map((i) => i.id));
  const again = ids.filter((id) => have.has(id));
  if (!again.length) return;
  try {
    await stack.provider.start(again, { timeoutMs: 60_000 });
    out(ctx, `started again     ${again.length} instance(s) \`kiln down\` stopped: ${again.join(' ')}`);
  } catch (err) {
    // kiln up stays up: the fleets' status shows those instances, and heal or a relaunch replaces them.
    ctx.log.warn({ err }, 'cannot start the instances kiln down stopped');
    out(ctx, `could not start again the instances \`kiln down\` stopped (${again.join(' ')}): ${(err as Error).message}; \`kiln status FLEET\` shows them, \`kiln heal FLEET\` replaces them`);
  }
}

/** The haproxy program for --balancer (default: haproxy when installed), or undefined for none. */
async function chooseBalancer(ctx: CliContext, choice: string | undefined): Promise<string | undefined> {
  if (choice !== undefined && choice !== 'haproxy' && choice !== 'none') throw new KilnError('KILN_USAGE', `--balancer ${choice}: haproxy or none`);
  if (choice === 'none') return undefined;
  const found = await findHaproxy(ctx.io.env);
  if (!found && choice === 'haproxy') throw new KilnError('KILN_BALANCER_FAILED', 'no haproxy on PATH or in /usr/sbin: install it (apt-get install haproxy), or run without one: --balancer none');
  return found ?? undefined;
}

const describeKeys = (k: KeyState) =>
  k.signingKey
    ? `signing key ${k.signingKey.keyId}; trusting ${k.trustedKeys.map((p) => p.keyId).join(', ') || 'no key'}`
    : 'none yet: deployments are refused until `kiln keys generate` (picked up without a restart)';

export const upCommand: CommandDef = {
  name: 'up',
  summary: 'run the controller and an embedded S3 endpoint on 127.0.0.1 (stays in the foreground)',
  usage: 'up [--port N] [--s3-port N] [--data DIR] [--bucket NAME] [--tls-cert FILE --tls-key FILE] [--provider process|nspawn] [--balancer haproxy|none]',
  details:
    'The controller keeps its state in the bucket; kiln commands run in the same directory find both\n' +
    'through .kiln/controller.json and .kiln/s3.json. The operator token is made on the first start and kept\n' +
    'in .kiln/controller.json (0600). Release keys in .kiln/keys are used when present, also when made later.\n' +
    'The first start picks free ports; .kiln/up.json records them (and this process\'s pid), and every later start\n' +
    'here listens on the same ones, so agents and instances started before reconnect. A recorded port another\n' +
    'process holds is KILN_PORT_IN_USE (--port 0 / --s3-port 0 pick free ones). One kiln up per directory: a\n' +
    'second one is KILN_ALREADY_RUNNING naming the first one\'s pid.\n' +
    'With haproxy installed (PATH or /usr/sbin), every fleet on the provider gets a frontend of its own on 127.0.0.1 (a\n' +
    'port kept across restarts: `kiln fleet show FLEET`), and every deployment drains through it (docs/balancers.md).\n' +
    'HAProxy outlives kiln up, so the fleets keep serving while it is stopped; the next kiln up takes it over.\n' +
    'Stop it with Ctrl-C, or `kiln down` from another terminal (which also stops the instances, local agents and HAProxy).',
  examples: ['kiln up &', 'kiln up --port 8080 --s3-port 8081', 'kiln up --provider nspawn', 'kiln up --balancer none         # no HAProxy: deployments are not drained'],
  options: {
    port: { type: 'string', value: 'N', help: "the controller's port (default: the last kiln up's here, else a free one; 0: a free one)" },
    's3-port': { type: 'string', value: 'N', help: "the S3 endpoint's port (default: the last kiln up's here, else a free one; 0: a free one)" },
    data: { type: 'string', value: 'DIR', help: 'where objects are kept (default .kiln/s3)' },
    bucket: { type: 'string', value: 'NAME', help: 'the bucket to create (default "kiln")' },
    'tls-cert': { type: 'string', value: 'FILE', help: 'serve https and wss with this PEM certificate (with --tls-key)' },
    'tls-key': { type: 'string', value: 'FILE', help: "the certificate's PEM private key" },
    provider: { type: 'string', value: 'NAME', help: 'where fleets launch instances: process (default; .kiln/process) or nspawn (root, Linux: real systemd machines; .kiln/nspawn)' },
    balancer: { type: 'string', value: 'NAME', help: 'haproxy (default when installed: a frontend per fleet, every swap drained; .kiln/haproxy) or none' },
  },
  positionals: [0, 0],
  async run(ctx, flags) {
    const tls = tlsFlags(ctx, flags);
    const provider = str(flags, 'provider') ?? 'process';
    if (provider !== 'process' && provider !== 'nspawn') throw new KilnError('KILN_USAGE', `--provider ${provider}: process or nspawn (ec2 needs a controller agents can reach: see docs/providers.md)`);
    const haproxy = await chooseBalancer(ctx, str(flags, 'balancer'));
    // A record that does not parse is no record: it holds only hints (ports, a pid checked against its start time).
    const last = await peekJsonFile(localUpFile(ctx.home), LocalUp);
    await refuseWhenRunning(ctx.home, last);
    const ports = await choosePorts(ctx, flags, last);
    const stack = await startLocalStack({
      home: ctx.home,
      log: ctx.log,
      dataDir: path.resolve(ctx.io.cwd, str(flags, 'data') ?? path.join(ctx.home, 's3')),
      bucket: str(flags, 'bucket') ?? 'kiln',
      port: ports.ctl.port,
      s3Port: ports.s3.port,
      provider,
      cacheDir: kilnCacheDir(ctx.io.env.KILN_CACHE_DIR),
      ...(tls ? { tls } : {}),
      onKeys: (k) => out(ctx, `release keys changed: ${describeKeys(k)}`),
      ...(haproxy ? { haproxy } : {}),
    }).catch((err: unknown) => {
      const recorded = isKilnError(err, 'KILN_PORT_IN_USE') && (err.details?.what === 'controller' ? ports.ctl : ports.s3).source === 'recorded';
      throw recorded ? recordedPortTaken(err as KilnError, ctx.home) : err;
    });
    const { s3, ctl, operatorToken, ctlFile, s3File } = stack;
    const listening = { ctl: portOf(ctl.url), s3: portOf(s3.location.endpoint!) }; // the embedded S3 always has an endpoint
    await writeLocalUp(ctx.home, { pid: process.pid, start: processStart(process.pid), port: listening.ctl, s3Port: listening.s3, provider, startedAt: new Date().toISOString(), stopped: [] });
    out(
      ctx,
      [
        `kiln controller   ${ctl.url}`,
        `agents connect to ${ctl.agentsUrl} (with their fleet's credential: \`kiln fleet create\` prints it)`,
        `operator token    ${operatorToken}`,
        `release keys      ${describeKeys(ctl.keys)}`,
        `provider          ${provider}: images and instances under ${path.join(ctx.home, provider)} (\`kiln images\`, \`kiln instances\`)`,
        `balancer          ${stack.balancerNote}`,
        `S3 endpoint       ${s3.location.endpoint}`,
        `bucket            ${s3.location.bucket}`,
        `S3 credentials    ${s3.location.accessKeyId} / ${s3.location.secretAccessKey} (local only)`,
        `ports             ${portLine(ports.ctl, ports.s3, listening, localUpFile(ctx.home))}`,
        `written to        ${ctlFile} and ${s3File}: kiln commands in this directory use them;`,
        `                  elsewhere set KILN_CONTROLLER=${ctl.url} KILN_TOKEN=<the token>`,
        `pid               ${process.pid}: press Ctrl-C to stop, or \`kiln down\` in this directory`,
      ].join('\n'),
    );
    // Listening before anything else: a Ctrl-C or `kiln down` right after the banner stops kiln up cleanly.
    const stopSignal = new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    if (last?.stopped.length && last.provider === provider) await startStopped(ctx, stack, last.stopped);
    // The instances started again serve once the balancer has them.
    if (stack.haproxy) await Promise.race([ctl.restoreTraffic(), stopSignal]);
    await stopSignal;
    await stack.close();
    out(ctx, `stopped${stack.haproxy ? `; HAProxy (pid ${stack.haproxy.pid}) goes on serving the fleets' endpoints: \`kiln down\` stops it` : ''}`);
  },
};
