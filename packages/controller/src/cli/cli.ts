import path from 'node:path';
import { createLogger, isKilnError, type Logger } from '@kiln/shared';
import { commonOptions, type CommandDef } from './cli-command.js';
import type { CliContext, CliIO, Flags } from './cli-context.js';
import { commandHelp as renderCommandHelp, fullUsage, groupHelp, mainHelp as renderMainHelp, type CommandSummary } from './cli-help.js';
import { didYouMean } from './did-you-mean.js';
import { kilnVersion } from './kiln-version.js';
import { logLines } from './log-lines.js';
import { parseOptions } from './parse-options.js';

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
      lazy('down', async () => (await import('./commands/down.js')).downCommand),
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
      lazy('release prune', async () => (await import('./commands/release.js')).releasePrune),
    ],
  ],
  [
    'fleets (through the controller)',
    [
      lazy('fleet create', async () => (await import('./commands/fleet.js')).fleetCreate),
      lazy('fleet list', async () => (await import('./commands/fleet.js')).fleetList),
      lazy('fleet show', async () => (await import('./commands/fleet.js')).fleetShow),
      lazy('fleet update', async () => (await import('./commands/fleet.js')).fleetUpdate),
      lazy('fleet delete', async () => (await import('./commands/fleet.js')).fleetDelete),
      lazy('config set', async () => (await import('./commands/config.js')).configSet),
      lazy('config unset', async () => (await import('./commands/config.js')).configUnset),
      lazy('config show', async () => (await import('./commands/config.js')).configShow),
      lazy('config history', async () => (await import('./commands/config.js')).configHistoryCommand),
      lazy('agents start', async () => (await import('./commands/agents.js')).agentsStart),
      lazy('agents list', async () => (await import('./commands/agents.js')).agentsList),
      lazy('agents stop', async () => (await import('./commands/agents.js')).agentsStop),
      lazy('deploy', async () => (await import('./commands/deploy.js')).deployCommand),
      lazy('deployments', async () => (await import('./commands/deploy.js')).deploymentsList),
      lazy('deployments show', async () => (await import('./commands/deploy.js')).deploymentsShow),
      lazy('deployments cancel', async () => (await import('./commands/deploy.js')).deploymentsCancel),
      lazy('deployments promote', async () => (await import('./commands/deploy.js')).deploymentsPromote),
      lazy('deployments abort', async () => (await import('./commands/deploy.js')).deploymentsAbort),
      lazy('status', async () => (await import('./commands/status.js')).statusCommand),
      lazy('drift', async () => (await import('./commands/status.js')).driftCommand),
      lazy('logs', async () => (await import('./commands/logs.js')).logsCommand),
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
      lazy('host logs', async () => (await import('./commands/host.js')).logsCommand),
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

/** The command groups: the first word of every two-word command ("release", "fleet", "host", …). */
const GROUPS = [...new Set(LAZY.filter((c) => c.name.includes(' ')).map((c) => c.name.split(' ')[0]!))];

const summariesOf = async (cmds: LazyCommand[]): Promise<CommandSummary[]> => Promise.all(cmds.map(async (c) => ({ name: c.name, summary: (await loadCommand(c)).summary })));

/** The commands of a group ("deployments" has its own command too, listed first). */
const groupCommands = (group: string) => LAZY.filter((c) => c.name === group || c.name.startsWith(`${group} `));

export async function mainHelp(): Promise<string> {
  return renderMainHelp(await Promise.all(SECTIONS.map(async ([title, cmds]) => [title, await summariesOf(cmds)] as [string, CommandSummary[]])));
}

/** A command's help page, its group's other commands under "see also". */
export async function commandHelp(cmd: CommandDef): Promise<string> {
  const group = cmd.name.split(' ')[0]!;
  const related = GROUPS.includes(group) ? await summariesOf(groupCommands(group).filter((c) => c.name !== cmd.name)) : [];
  return renderCommandHelp(cmd, commonOptions(cmd), related);
}

async function findCommand(argv: string[]): Promise<{ cmd: CommandDef; rest: string[] } | undefined> {
  const two = LAZY.find((c) => c.name === `${argv[0]} ${argv[1]}`);
  if (two) return { cmd: await loadCommand(two), rest: argv.slice(2) };
  const one = LAZY.find((c) => c.name === argv[0]);
  return one ? { cmd: await loadCommand(one), rest: argv.slice(1) } : undefined;
}

/** "unknown command" with the likely one: a typo of a command or a group's command, or a command that moved into a group. */
function unknownCommand(argv: string[]): string {
  const [first = '', second] = argv;
  if (GROUPS.includes(first) && second !== undefined) {
    const subs = groupCommands(first).map((c) => c.name.slice(first.length + 1)).filter(Boolean);
    const near = didYouMean(second, subs).map((s) => `kiln ${first} ${s}`);
    return `unknown command "${first} ${second}"; ${near.length ? `did you mean ${near.join(' or ')}?` : `kiln ${first} has: ${subs.join(', ')} (kiln ${first} --help)`}`;
  }
  // "install" → host install: a command that moved into a group
  const moved = LAZY.filter((c) => c.name.endsWith(` ${first}`)).map((c) => `kiln ${c.name}`);
  const near = didYouMean(first, [...new Set(LAZY.map((c) => c.name.split(' ')[0]!))]).map((n) => `kiln ${n}`);
  const guesses = [...new Set([...moved, ...near])];
  return `unknown command "${first}"; ${guesses.length ? `did you mean ${guesses.join(' or ')}?` : 'see kiln --help'}`;
}

export interface RunCliOptions {
  io: CliIO;
  /** a test hook: installs pause at this step */
  pauseAt?: string | undefined;
  log?: Logger;
}

const HELP = ['--help', '-h'];

/** Runs one kiln command; returns the exit code (0 ok, 1 failed, 2 usage). Never throws. */
export async function runCli(argv: string[], opts: RunCliOptions): Promise<number> {
  const { io } = opts;
  if (argv[0] === '--version' || argv[0] === '-V') {
    io.stdout.write(`kiln ${kilnVersion()}\n`);
    return 0;
  }
  if (!argv.length || HELP.includes(argv[0]!) || argv[0] === 'help') {
    // `kiln help deploy`, `kiln help release`, `kiln help release push`
    const what = argv[0] === 'help' ? argv.slice(1) : [];
    const sub = what.length ? await findCommand(what) : undefined;
    if (sub) io.stdout.write(await commandHelp(sub.cmd));
    else if (what.length && GROUPS.includes(what[0]!)) io.stdout.write(groupHelp(what[0]!, await summariesOf(groupCommands(what[0]!))));
    else if (what.length) {
      io.stderr.write(`error KILN_USAGE: ${unknownCommand(what)}\n`);
      return 2;
    } else io.stdout.write(await mainHelp());
    return argv.length ? 0 : 2;
  }
  const found = await findCommand(argv);
  if (!found) {
    // `kiln release`, `kiln fleet --help`: the group's commands
    if (GROUPS.includes(argv[0]!) && (argv.length === 1 || HELP.includes(argv[1]!))) {
      io.stdout.write(groupHelp(argv[0]!, await summariesOf(groupCommands(argv[0]!))));
      return argv.length === 1 ? 2 : 0;
    }
    io.stderr.write(`error KILN_USAGE: ${unknownCommand(argv)}\n`);
    return 2;
  }
  const { cmd, rest } = found;
  let flags: Flags;
  let positionals: string[];
  try {
    ({ flags, positionals } = parseOptions(rest, { ...cmd.options, ...commonOptions(cmd) }));
  } catch (err) {
    // parseOptions words every case it knows; Node's own text is the fallback for one it does not
    const message = isKilnError(err, 'KILN_USAGE') ? err.message : (err as Error).message.split('\n')[0];
    io.stderr.write(`error KILN_USAGE: ${message}\nusage: ${fullUsage(cmd)}   (kiln ${cmd.name} --help)\n`);
    return 2;
  }
  if (flags.help) {
    io.stdout.write(await commandHelp(cmd));
    return 0;
  }
  const [min, max] = cmd.positionals;
  if (positionals.length < min || positionals.length > max) {
    io.stderr.write(`error KILN_USAGE: kiln ${cmd.name} takes ${min === max ? min : `${min} to ${max}`} argument${max === 1 ? '' : 's'}, got ${positionals.length}\nusage: ${fullUsage(cmd)}\n`);
    return 2;
  }
  const level = typeof flags['log-level'] === 'string' ? flags['log-level'] : 'warn';
  const log = opts.log ?? createLogger({ level, name: 'kiln', destination: logLines(io.stderr, level) });
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
    // A failure kiln did not name is a bug: the coded line first, like every error, then the stack to report.
    const message = err instanceof Error ? err.message : String(err);
    io.stderr.write(`error KILN_INTERNAL: ${message} (unexpected: a bug in kiln; please report it with this stack)\n${err instanceof Error ? `${err.stack}\n` : ''}`);
    if (ctx.json) io.stdout.write(JSON.stringify({ error: { code: 'KILN_INTERNAL', message } }) + '\n');
    return 1;
  }
}
