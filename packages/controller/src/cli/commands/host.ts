import path from 'node:path';
import {
  KilnError,
  appLayout,
  createProcessSupervisor,
  install,
  loadState,
  recoverUnderLock,
  rollback,
  type InstallOptions,
  type InstallResult,
  type InstallStep,
} from '@kiln/shared';
import { S3_OPTIONS, TRUST_OPTIONS, JSON_OPTION, type CommandDef, type OptionDef } from '../cli-command.js';
import { note, openStore, openStoreIfAny, out, printJson, str, trustedKeys, type CliContext, type Flags } from '../cli-context.js';
import { createProgress } from '../progress.js';
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

function intFlag(flags: Flags, name: string, min: number, max: number): number | undefined {
  const v = str(flags, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new KilnError('KILN_USAGE', `--${name} ${v}: a whole number from ${min} to ${max}`);
  return n;
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

function report(ctx: CliContext, r: InstallResult): void {
  if (ctx.json) return printJson(ctx, r);
  const total = Object.values(r.timings).reduce((a, b) => a + (b ?? 0), 0);
  const steps = Object.entries(r.timings).map(([k, v]) => `${k} ${v} ms`).join(', ');
  if (r.outcome === 'unchanged') return out(ctx, `${r.app} ${r.version} is already installed: nothing to do`);
  out(ctx, `${r.outcome} ${r.app} ${r.version}${r.previous ? ` (was ${r.previous})` : ''} in ${total} ms${steps ? `: ${steps}` : ''}`);
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
    const { interrupted } = await recoverUnderLock(layout, app!, ctx.log, createProcessSupervisor({ appDir: layout.appDir, log: ctx.log }));
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
