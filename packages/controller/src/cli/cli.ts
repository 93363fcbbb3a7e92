import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger, isKilnError, type Logger } from '@kiln/shared';
import type { CommandDef, OptionDef } from './cli-command.js';
import type { CliContext, CliIO, Flags } from './cli-context.js';

/**
 * A command by name, its module loaded only when the command runs or its help is shown: `kiln status`
 * does not load what `kiln up` or `kiln release push` need (fastify, the AWS SDK). The name must be
 * the definition's (checked when it loads).
 */
interface LazyCommand {
  name: string;
  load(): Promise<CommandDef>;
}

const lazy = (name: string, load: () => Promise<CommandDef>): LazyCommand => ({ name, load });

const SECTIONS: Array<[string, LazyCommand[]]> = [
  [
    'getting started',
    [
      lazy('demo', async () => (await import('./commands/demo.js')).demoCommand),
      lazy('up', async () => (await import('./commands/up.js')).upCommand),
      lazy('keys generate', async () => (await import('./commands/keys.js')).keysGenerate),
    ],
  ],
  [
    'releases (in S3)',
    [
      lazy('release push', async () => (await import('./commands/release.js')).releasePush),
      lazy('release list', async () => (await import('./commands/release.js')).releaseList),
      lazy('release show', async () => (await import('./commands/release.js')).releaseShow),
      lazy('release promote', async () => (await import('./commands/release.js')).releasePromote),
      lazy('release channel', async () => (await import('./commands/release.js')).releaseChannel),
    ],
  ],
  [
    'fleets (through the controller)',
    [
      lazy('fleet create', async () => (await import('./commands/fleet.js')).fleetCreate),
      lazy('fleet list', async () => (await import('./commands/fleet.js')).fleetList),
      lazy('agents start', async () => (await import('./commands/agents.js')).agentsStart),
      lazy('agents list', async () => (await import('./commands/agents.js')).agentsList),
      lazy('agents stop', async () => (await import('./commands/agents.js')).agentsStop),
      lazy('deploy', async () => (await import('./commands/deploy.js')).deployCommand),
      lazy('deployments', async () => (await import('./commands/deploy.js')).deploymentsList),
      lazy('deployments show', async () => (await import('./commands/deploy.js')).deploymentsShow),
      lazy('deployments cancel', async () => (await import('./commands/deploy.js')).deploymentsCancel),
      lazy('status', async () => (await import('./commands/status.js')).statusCommand),
      lazy('drift', async () => (await import('./commands/status.js')).driftCommand),
      lazy('rollback', async () => (await import('./commands/deploy.js')).fleetRollback),
      lazy('heal', async () => (await import('./commands/images.js')).healCommand),
    ],
  ],
  [
    'images and instances (the provider `kiln up` runs)',
    [
      lazy('bake', async () => (await import('./commands/images.js')).bakeCommand),
      lazy('images', async () => (await import('./commands/images.js')).imagesCommand),
      lazy('instances', async () => (await import('./commands/images.js')).instancesCommand),
      lazy('image base', async () => (await import('./commands/image-base.js')).imageBaseCommand),
      lazy('agent bundle', async () => (await import('./commands/agent.js')).agentBundleCommand),
      lazy('agent publish', async () => (await import('./commands/agent.js')).agentPublishCommand),
    ],
  ],
  [
    'one host, without a controller',
    [
      lazy('host install', async () => (await import('./commands/host.js')).installCommand),
      lazy('host rollback', async () => (await import('./commands/host.js')).rollbackCommand),
      lazy('host installed', async () => (await import('./commands/host.js')).installedCommand),
      lazy('host recover', async () => (await import('./commands/host.js')).recoverCommand),
      lazy('host stop', async () => (await import('./commands/host.js')).stopCommand),
    ],
  ],
];

const LAZY: LazyCommand[] = SECTIONS.flatMap(([, cmds]) => cmds);

async function loadCommand(lc: LazyCommand): Promise<CommandDef> {
  const cmd = await lc.load();
  if (cmd.name !== lc.name) throw new Error(`cli.ts lists "${lc.name}" for the command named "${cmd.name}"`);
  return cmd;
}

/** Every command's definition (loads every command module: for help and tests, not for running one). */
export const loadCommands = (): Promise<CommandDef[]> => Promise.all(LAZY.map(loadCommand));

const COMMON: Record<string, OptionDef> = {
  home: { type: 'string', value: 'DIR', help: "kiln's local directory: keys, local S3 (default ./.kiln; env KILN_HOME)" },
  'log-level': { type: 'string', value: 'LEVEL', help: 'log detail on stderr: error, warn, info, debug (default warn)' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
};

export async function mainHelp(): Promise<string> {
  const width = Math.max(...LAZY.map((c) => c.name.length));
  const summaries = new Map((await loadCommands()).map((c) => [c.name, c.summary]));
  return [
    'kiln: publish releases to S3, deploy them to fleets in place (hotfix) and see what runs where.',
    '',
    'usage: kiln COMMAND [options]      kiln COMMAND --help for its options',
    ...SECTIONS.flatMap(([title, cmds]) => ['', `${title}:`, ...cmds.map((c) => `  ${c.name.padEnd(width)}  ${summaries.get(c.name)}`)]),
    '',
    'Start with `kiln demo`; or `kiln up` in one terminal, then `kiln keys generate`, `kiln release push`,',
    '`kiln fleet create`, `kiln agents start`, `kiln deploy` in another (README: "Fleets and hotfixes").',
    '',
  ].join('\n');
}

export function commandHelp(cmd: CommandDef): string {
  const opts = { ...cmd.options, ...COMMON };
  const label = (name: string, o: OptionDef) => `${o.short ? `-${o.short}, ` : ''}--${name}${o.value ? ` ${o.value}` : ''}`;
  const width = Math.max(...Object.entries(opts).map(([n, o]) => label(n, o).length));
  return [
    `usage: kiln ${cmd.usage}`,
    '',
    `${cmd.summary}.`,
    ...(cmd.details ? ['', cmd.details] : []),
    '',
    'options:',
    ...Object.entries(opts).map(([n, o]) => `  ${label(n, o).padEnd(width)}  ${o.help}`),
    '',
  ].join('\n');
}

async function findCommand(argv: string[]): Promise<{ cmd: CommandDef; rest: string[] } | undefined> {
  const two = LAZY.find((c) => c.name === `${argv[0]} ${argv[1]}`);
  if (two) return { cmd: await loadCommand(two), rest: argv.slice(2) };
  const one = LAZY.find((c) => c.name === argv[0]);
  return one ? { cmd: await loadCommand(one), rest: argv.slice(1) } : undefined;
}

export interface RunCliOptions {
  io: CliIO;
  /** a test hook: installs pause at this step */
  pauseAt?: string | undefined;
  log?: Logger;
}

/** Runs one kiln command; returns the exit code (0 ok, 1 failed, 2 usage). Never throws. */
export async function runCli(argv: string[], opts: RunCliOptions): Promise<number> {
  const { io } = opts;
  if (!argv.length || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    const sub = argv[0] === 'help' && argv.length > 1 ? await findCommand(argv.slice(1)) : undefined;
    io.stdout.write(sub ? commandHelp(sub.cmd) : await mainHelp());
    return argv.length ? 0 : 2;
  }
  const found = await findCommand(argv);
  if (!found) {
    // a group's commands ("release" → release push, …) or a command that moved into one ("install" → host install)
    const group = LAZY.filter((c) => c.name.startsWith(`${argv[0]} `) || c.name.endsWith(` ${argv[0]}`)).map((c) => `kiln ${c.name}`);
    io.stderr.write(`error KILN_USAGE: unknown command "${argv.slice(0, 2).join(' ')}"${group.length ? `; did you mean one of: ${group.join(', ')}` : '; see kiln --help'}\n`);
    return 2;
  }
  const { cmd, rest } = found;
  let flags: Flags;
  let positionals: string[];
  try {
    const parsed = parseArgs({ args: rest, options: { ...cmd.options, ...COMMON }, allowPositionals: true, strict: true });
    flags = parsed.values as Flags;
    positionals = parsed.positionals;
  } catch (err) {
    io.stderr.write(`error KILN_USAGE: ${(err as Error).message.split('\n')[0]}\nusage: kiln ${cmd.usage}   (kiln ${cmd.name} --help)\n`);
    return 2;
  }
  if (flags.help) {
    io.stdout.write(commandHelp(cmd));
    return 0;
  }
  const [min, max] = cmd.positionals;
  if (positionals.length < min || positionals.length > max) {
    io.stderr.write(`error KILN_USAGE: kiln ${cmd.name} takes ${min === max ? min : `${min} to ${max}`} argument${max === 1 ? '' : 's'}, got ${positionals.length}\nusage: kiln ${cmd.usage}\n`);
    return 2;
  }
  const level = typeof flags['log-level'] === 'string' ? flags['log-level'] : 'warn';
  const log = opts.log ?? createLogger({ level, name: 'kiln' });
  const ctx: CliContext = {
    io,
    log,
    runKiln: (args, childIo) => runCli(args, { io: childIo, log }),
    home: path.resolve(io.cwd, (typeof flags.home === 'string' ? flags.home : undefined) ?? io.env.KILN_HOME ?? '.kiln'),
    json: !!flags.json,
    pauseAt: opts.pauseAt,
  };
  try {
    return (await cmd.run(ctx, flags, positionals)) ?? 0;
  } catch (err) {
    if (isKilnError(err)) {
      io.stderr.write(`error ${err.code}: ${err.message}\n`);
      if (ctx.json) io.stdout.write(JSON.stringify({ error: err.toJSON() }) + '\n');
      return err.code === 'KILN_USAGE' ? 2 : 1;
    }
    io.stderr.write(`error (unexpected): ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

