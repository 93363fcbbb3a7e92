import path from 'node:path';
import {
  KilnError,
  appLayout,
  createProcessSupervisor,
  resolveSecrets,
  install,
  loadState,
  logProcesses,
  logSource,
  peekJsonFile,
  readAppLogs,
  recoverUnderLock,
  rollback,
  type InstallOptions,
  type InstallResult,
  type InstallStep, formatBytes } from '@kiln/shared';
import { S3_OPTIONS, TRUST_OPTIONS, JSON_OPTION, type CommandDef, type OptionDef } from '../cli-command.js';
import { intFlag, note, openStore, openStoreIfAny, out, printJson, str, trustedKeys, type CliContext, type Flags } from '../cli-context.js';
import { createProgress } from '../progress.js';
import { APP_LOG_DETAILS, APP_LOG_OPTIONS, appLogRequest, printLogLine, readUntilInterrupted } from '../app-log-print.js';
import { agentConfigFile } from '../../providers/process/agent-process.js';
import { z } from 'zod';
import { formatTable } from '@kiln/shared';

const ROOT_OPTION: Record<string, OptionDef> = {
  root: { type: 'string', value: 'DIR', help: 'the host root the app is installed under (state in DIR/var/lib/kiln)' },
};

const RUN_OPTIONS: Record<string, OptionDef> = {
  port: { type: 'string', value: 'N', help: "give the app this port instead of the manifest's (PORT)" },
  keep: { type: 'string', value: 'N', help: 'old releases kept beyond current and previous (default 2)' },
  'skip-health': { type: 'boolean', help: 'do not wait for the health check' },
};

function rootOf(ctx: CliContext, flags: Flags): string {
  const root = str(flags, 'root');
  if (!root) throw new KilnError('KILN_USAGE', 'this command needs --root DIR (the host root; "/" on a real host)');
  return path.resolve(ctx.io.cwd, root);
}

/** What install and rollback share: the service manager, the keys, the progress display, the test pause. */
async function routineOptions(ctx: CliContext, flags: Flags, app: string): Promise<Omit<InstallOptions, 'target'>> {
  const root = rootOf(ctx, flags);
  const port = intFlag(flags, 'port', 1, 65535);
  const keep = intFlag(flags, 'keep', 0, 1000);
  const layout = appLayout(root, app);
  const progress = createProgress(ctx.io.stderr, ctx.json);
  return {
    root,
    app,
    keys: await trustedKeys(flags, ctx),
    service: createProcessSupervisor({ appDir: layout.appDir, log: ctx.log, ...(port ? { env: { PORT: String(port) } } : {}) }),
    // On this host: the config the app runs with keeps its secrets resolved here, never elsewhere.
    resolveSecrets: hostSecrets(root, ctx),
    log: ctx.log,
    ...(port ? { port } : {}),
    ...(keep !== undefined ? { keep } : {}),
    skipHealth: !!flags['skip-health'],
    onStep: async (step: InstallStep, version: string) => {
      progress.phase(`${step} ${app} ${version}`);
      if (ctx.pauseAt === step) {
        note(ctx, `paused at ${step}`);
        setInterval(() => undefined, 1 << 30);
        await new Promise(() => undefined);
      }
    },
    onProgress: (done, total) => progress.bytes(done, total),
  };
}

const hostSecrets = (root: string, ctx: CliContext) => (refs: Record<string, string>) => resolveSecrets(refs, { root, env: ctx.io.env });

function report(ctx: CliContext, r: InstallResult): void {
  if (ctx.json) return printJson(ctx, r);
  const total = Object.values(r.timings).reduce((a, b) => a + (b ?? 0), 0);
  const steps = Object.entries(r.timings).map(([k, v]) => `${k} ${v} ms`).join(', ');
  if (r.outcome === 'unchanged') return out(ctx, `${r.app} ${r.version} is already installed: nothing to do`);
  const fetched = r.downloaded && r.releaseBytes !== undefined ? `, fetched ${formatBytes(r.fetchedBytes ?? 0)} of ${formatBytes(r.releaseBytes)}` : '';
  out(ctx, `${r.outcome} ${r.app} ${r.version}${r.previous ? ` (was ${r.previous})` : ''}${r.config ? ` with config ${r.config.seq}` : ''} in ${total} ms${fetched}${steps ? `: ${steps}` : ''}`);
  for (const [name, h] of Object.entries(r.hooks ?? {})) out(ctx, `  hook ${name}: exit ${h.code} in ${h.ms} ms${h.tail.length ? ` (last line: ${h.tail.at(-1)})` : ''}`);
  for (const w of r.warnings ?? []) note(ctx, `warning: ${w}`);
}

export const installCommand: CommandDef = {
  name: 'host install',
  summary: 'install a release on this host with the shared install routine',
  usage: 'host install APP (--version V | --channel C) --root DIR [options]',
  examples: ['kiln host install shop --channel stable --root / --port 8080', 'kiln host install shop --version 1.2.0 --root /tmp/host'],
  details:
    'The same routine the agent runs at boot and on command: verify, extract, swap, restart, health gate, or swap back.\n' +
    'Installing what is installed changes nothing, but starts the app if it is not running.',
  options: {
    version: { type: 'string', value: 'V', help: 'install this version' },
    channel: { type: 'string', value: 'C', help: 'install what this channel points to' },
    'allow-downgrade': { type: 'boolean', help: 'accept a release older (lower seq) than the installed one' },
    ...ROOT_OPTION,
    ...RUN_OPTIONS,
    ...S3_OPTIONS,
    ...TRUST_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const version = str(flags, 'version');
    const channel = str(flags, 'channel');
    if (!version === !channel) throw new KilnError('KILN_USAGE', 'host install needs exactly one of --version V or --channel C');
    const base = await routineOptions(ctx, flags, app!);
    // A release already on disk installs without a bucket; a channel always needs one.
    const store = channel ? await openStore(flags, ctx) : await openStoreIfAny(flags, ctx);
    const result = await install({ ...base, target: version ? { version } : { channel: channel! }, ...(store ? { store } : {}), allowDowngrade: !!flags['allow-downgrade'] });
    report(ctx, result);
  },
};

export const rollbackCommand: CommandDef = {
  name: 'host rollback',
  summary: 'swap back to the previous release on this host (health-gated); again swaps forward',
  usage: 'host rollback APP --root DIR [options]',
  examples: ['kiln host rollback shop --root /'],
  options: { ...ROOT_OPTION, ...RUN_OPTIONS, ...TRUST_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    report(ctx, await rollback(await routineOptions(ctx, flags, app!)));
  },
};

export const recoverCommand: CommandDef = {
  name: 'host recover',
  summary: 'run start-up recovery for an app on this host (what the agent does at boot)',
  usage: 'host recover APP --root DIR',
  examples: ['kiln host recover shop --root /'],
  options: { ...ROOT_OPTION, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const layout = appLayout(rootOf(ctx, flags), app!);
    const { interrupted } = await recoverUnderLock(layout, app!, ctx.log, createProcessSupervisor({ appDir: layout.appDir, log: ctx.log }), hostSecrets(rootOf(ctx, flags), ctx));
    if (ctx.json) return printJson(ctx, { interrupted });
    out(ctx, interrupted ? `recovered: the ${interrupted.op} of ${interrupted.version} was ${interrupted.outcome}` : 'nothing to recover');
  },
};

export const stopCommand: CommandDef = {
  name: 'host stop',
  summary: 'stop the app (and its process supervisor) on this host',
  usage: 'host stop APP --root DIR',
  examples: ['kiln host stop shop --root /tmp/host'],
  options: { ...ROOT_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const layout = appLayout(rootOf(ctx, flags), app!);
    const service = createProcessSupervisor({ appDir: layout.appDir, log: ctx.log });
    const { active } = await service.status();
    await service.stop();
    out(ctx, active ? `stopped ${app}` : `${app} was not running`);
  },
};

export const installedCommand: CommandDef = {
  name: 'host installed',
  summary: 'show what is installed on this host: current, previous, last operation, service',
  usage: 'host installed APP --root DIR [--json]',
  examples: ['kiln host installed shop --root /'],
  options: { ...ROOT_OPTION, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const layout = appLayout(rootOf(ctx, flags), app!);
    const state = await loadState(layout, app!, ctx.log);
    const service = await createProcessSupervisor({ appDir: layout.appDir, log: ctx.log }).status();
    if (ctx.json) return printJson(ctx, { ...state, service });
    const rel = (r: typeof state.current) => (r ? `${r.version} (seq ${r.seq}, via ${r.via}, ${r.installedAt})` : '-');
    const last = state.last ? `${state.last.op} ${state.last.version}: ${state.last.outcome}${state.last.error ? ` ${state.last.error.code}` : ''}` : '-';
    out(
      ctx,
      formatTable(
        ['FIELD', 'VALUE'],
        [
          ['current', rel(state.current)],
          ['previous', rel(state.previous)],
          ['last', last],
          ['service', service.active ? `running, pid ${service.pid}` : 'not running'],
        ],
      ),
    );
  },
};

const ServiceManagerOf = z.object({ serviceManager: z.enum(['systemd', 'process']).optional() });

/** --service-manager, else the one the agent config on this root names, else the process supervisor. */
async function serviceManagerOf(flags: Flags, root: string): Promise<'systemd' | 'process'> {
  const given = str(flags, 'service-manager');
  if (given !== undefined && given !== 'systemd' && given !== 'process') throw new KilnError('KILN_USAGE', `--service-manager ${given}: systemd or process`);
  return given ?? (await peekJsonFile(agentConfigFile(root), ServiceManagerOf))?.serviceManager ?? 'process';
}

export const logsCommand: CommandDef = {
  name: 'host logs',
  summary: "the app's output on this host: the last lines of each process, or follow new ones",
  usage: 'host logs APP --root DIR [--process P] [--lines N] [--follow] [--service-manager systemd|process]',
  examples: ['kiln host logs shop --root / --service-manager systemd --follow', 'kiln host logs shop --root /tmp/host --process worker --lines 50'],
  details:
    "Reads where the service manager keeps it: the process supervisor's log files under the root\n" +
    '(var/lib/kiln/apps/APP/service*.log), or the journal of the units (journalctl -u kiln-app-APP…; the root is / there).\n' +
    'Prints PROCESS | line, or {process, line} a line with --json. Ctrl-C ends a follow.\n' +
    APP_LOG_DETAILS,
  options: {
    ...ROOT_OPTION,
    ...APP_LOG_OPTIONS,
    'service-manager': { type: 'string', value: 'KIND', help: "systemd or process (default: the agent config's on this root, else process)" },
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const root = rootOf(ctx, flags);
    const req = appLogRequest(flags);
    const source = logSource(await serviceManagerOf(flags, root), root, app!);
    const processes = await logProcesses(source, req.process);
    await readUntilInterrupted(ctx, async (signal) => {
      await Promise.all(
        processes.map((process) =>
          readAppLogs({ source, process, lines: req.lines, follow: req.follow, signal, onLines: (lines) => lines.forEach((line) => printLogLine(ctx, { process, line })) }),
        ),
      );
    });
  },
};
