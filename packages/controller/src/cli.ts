import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger, isKilnError, type Logger } from '@kiln/shared';
import type { CommandDef, OptionDef } from './cli-command.js';
import type { CliContext, CliIO, Flags } from './cli-context.js';
import { agentsList, agentsStart, agentsStop } from './cmd-agents.js';
import { demoCommand } from './cmd-demo.js';
import { deployCommand, deploymentsCancel, deploymentsList, deploymentsShow, fleetRollback } from './cmd-deploy.js';
import { fleetCreate, fleetList } from './cmd-fleet.js';
import { installCommand, installedCommand, recoverCommand, rollbackCommand, stopCommand } from './cmd-install.js';
import { keysGenerate } from './cmd-keys.js';
import { releaseChannel, releaseList, releasePromote, releasePush, releaseShow } from './cmd-release.js';
import { driftCommand, statusCommand } from './cmd-status.js';
import { upCommand } from './cmd-up.js';

const SECTIONS: Array<[string, CommandDef[]]> = [
  ['getting started', [demoCommand, upCommand, keysGenerate]],
  ['releases (in S3)', [releasePush, releaseList, releaseShow, releasePromote, releaseChannel]],
  [
    'fleets (through the controller)',
    [fleetCreate, fleetList, agentsStart, agentsList, agentsStop, deployCommand, deploymentsList, deploymentsShow, deploymentsCancel, statusCommand, driftCommand, fleetRollback],
  ],
  ['one host, without a controller', [installCommand, rollbackCommand, installedCommand, recoverCommand, stopCommand]],
];

export const COMMANDS: CommandDef[] = SECTIONS.flatMap(([, cmds]) => cmds);

const COMMON: Record<string, OptionDef> = {
  home: { type: 'string', value: 'DIR', help: "kiln's local directory: keys, local S3 (default ./.kiln; env KILN_HOME)" },
  'log-level': { type: 'string', value: 'LEVEL', help: 'log detail on stderr: error, warn, info, debug (default warn)' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
};

export function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'kiln: publish releases to S3, deploy them to fleets in place (hotfix) and see what runs where.',
    '',
    'usage: kiln COMMAND [options]      kiln COMMAND --help for its options',
    ...SECTIONS.flatMap(([title, cmds]) => ['', `${title}:`, ...cmds.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`)]),
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

function findCommand(argv: string[]): { cmd: CommandDef; rest: string[] } | undefined {
  const two = COMMANDS.find((c) => c.name === `${argv[0]} ${argv[1]}`);
  if (two) return { cmd: two, rest: argv.slice(2) };
  const one = COMMANDS.find((c) => c.name === argv[0]);
  return one ? { cmd: one, rest: argv.slice(1) } : undefined;
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
    const sub = argv[0] === 'help' && argv.length > 1 ? findCommand(argv.slice(1)) : undefined;
    io.stdout.write(sub ? commandHelp(sub.cmd) : mainHelp());
    return argv.length ? 0 : 2;
  }
  const found = findCommand(argv);
  if (!found) {
    // a group's commands ("release" → release push, …) or a command that moved into one ("install" → host install)
    const group = COMMANDS.filter((c) => c.name.startsWith(`${argv[0]} `) || c.name.endsWith(` ${argv[0]}`)).map((c) => `kiln ${c.name}`);
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
  const ctx: CliContext = {
    io,
    log: opts.log ?? createLogger({ level, name: 'kiln' }),
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

