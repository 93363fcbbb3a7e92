import type { CommandDef, OptionDef } from './cli-command.js';

/** A command's name and one line on what it does, as the lists in help show it. */
export interface CommandSummary {
  name: string;
  summary: string;
}

const label = (name: string, o: OptionDef) => `${o.short ? `-${o.short}, ` : ''}--${name}${o.value ? ` ${o.value}` : ''}`;

/** Names and summaries in two columns, indented. */
const listing = (cmds: CommandSummary[], width = Math.max(...cmds.map((c) => c.name.length))) => cmds.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`);

/**
 * The usage line: the command's synopsis plus every option of its own it does not already name,
 * so no option hides below the fold (`--home`, `--log-level` and `--help` are listed under options).
 */
export function fullUsage(cmd: CommandDef): string {
  const named = (n: string) => new RegExp(`--${n}(?![\\w-])`).test(cmd.usage);
  const more = Object.entries(cmd.options)
    .filter(([n]) => !named(n))
    .map(([n, o]) => `[--${n}${o.value ? ` ${o.value}` : ''}]${o.multiple ? '...' : ''}`);
  // "[options]" stood for the options now listed
  return `kiln ${[cmd.usage.replace(/\s*\[options\]/, ''), ...more].join(' ')}`;
}

export function mainHelp(sections: Array<[string, CommandSummary[]]>): string {
  const width = Math.max(...sections.flatMap(([, cmds]) => cmds.map((c) => c.name.length)));
  return [
    'kiln: publish releases to S3, deploy them to fleets in place (hotfix) and see what runs where.',
    '',
    'usage: kiln COMMAND [options]      kiln COMMAND --help for its options, kiln GROUP --help for a group',
    '       kiln --version',
    ...sections.flatMap(([title, cmds]) => ['', `${title}:`, ...listing(cmds, width)]),
    '',
    'Start with `kiln demo`; or `kiln up` in one terminal, then `kiln keys generate`, `kiln release push`,',
    '`kiln fleet create`, `kiln agents start`, `kiln deploy` in another (README: "Fleets and hotfixes").',
    '',
  ].join('\n');
}

/** `kiln release --help`: the group's commands, each with what it does. */
export function groupHelp(group: string, cmds: CommandSummary[]): string {
  return [
    `usage: kiln ${group} COMMAND [options]      kiln ${group} COMMAND --help for its options`,
    '',
    `commands of kiln ${group}:`,
    ...listing(cmds.map((c) => ({ name: c.name, summary: c.summary }))),
    '',
  ].join('\n');
}

/** One command's page: usage, what it does, its options (then the common ones), examples, related commands. */
export function commandHelp(cmd: CommandDef, common: Record<string, OptionDef>, related: CommandSummary[] = []): string {
  const opts = { ...cmd.options, ...common };
  const width = Math.max(...Object.entries(opts).map(([n, o]) => label(n, o).length));
  return [
    `usage: ${fullUsage(cmd)}`,
    '',
    `${cmd.summary}.`,
    ...(cmd.details ? ['', cmd.details] : []),
    '',
    'options:',
    ...Object.entries(opts).map(([n, o]) => `  ${label(n, o).padEnd(width)}  ${o.help}`),
    ...(cmd.examples?.length ? ['', 'examples:', ...cmd.examples.map((e) => `  ${e}`)] : []),
    ...(related.length ? ['', 'see also:', ...listing(related)] : []),
    '',
  ].join('\n');
}
