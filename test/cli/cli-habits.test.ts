// The CLI's habits (issue 16, item 10): --version, "did you mean" for a mistyped command or option
// (never Node's parseArgs text), a group's help for `kiln GROUP --help`, and help pages that carry
// an example each and a usage line naming every option. The binary as a user runs it where the
// answer is a process's (exit code, stderr); runCli in this process to walk every help page.
import { readFile } from 'node:fs/promises';
import { loadCommands } from '@kiln/controller';
import { describe, expect, it } from 'vitest';
import { kiln, kilnHere as run } from '../helpers/cli.js';
import { tempDir } from '../helpers/release.js';

/** Node's own words for a bad command line: the CLI must never show them. */
const NODE_PARSEARGS = /To specify a positional argument|Unknown option '|argument missing|argument is ambiguous|does not take an argument/;

describe('kiln --version', () => {
  it('kiln --version and -V print the package version (there was no --version: "unknown command")', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../packages/controller/package.json', import.meta.url), 'utf8'));
    for (const flag of ['--version', '-V']) {
      const r = await kiln([flag]);
      expect([r.code, r.stdout, r.stderr], flag).toEqual([0, `kiln ${pkg.version}\n`, '']);
    }
  });
});

describe('did you mean', () => {
  it('a mistyped command, group command or option gets the likely one, in kiln words, exit 2 (was Node\'s raw parseArgs text)', async () => {
    const cwd = await tempDir('kiln-habits-');
    const cases: Array<[string[], RegExp]> = [
      [['deplyo', 'web', '1.0.0'], /^error KILN_USAGE: unknown command "deplyo"; did you mean kiln deploy\?/],
      [['stauts', 'web'], /did you mean kiln status\?/],
      [['relase', 'list', 'web'], /did you mean kiln release\?/],
      [['release', 'pish'], /unknown command "release pish"; did you mean kiln release push\?/],
      [['fleet', 'craete', 'web'], /did you mean kiln fleet create\?/],
      [['install', 'web'], /did you mean kiln host install\?/],
      [['host', 'install', 'web', '--versoin', '1'], /^error KILN_USAGE: unknown option --versoin; did you mean --version\?/],
      [['deploy', 'web', '1.0.0', '--stratgy', 'bake'], /unknown option --stratgy; did you mean --strategy\?/],
      [['status', 'web', '--jsno'], /unknown option --jsno; did you mean --json\?/],
      [['status', 'web', '-x'], /unknown option -x; the options are --controller, --token, --json/],
      [['fleet', 'create', 'web', '--app'], /--app needs a value: --app APP/],
      [['fleet', 'create', 'web', '--app', '--json'], /--app needs a value: --app APP \(a value starting with "-" goes as --app=--json\)/],
      [['keys', 'generate', '--force=yes'], /--force takes no value/],
      [['demo', '--home', '/tmp/x'], /unknown option --home/],
    ];
    const results = await Promise.all(cases.map(([argv]) => kiln(argv, { cwd })));
    results.forEach((r, i) => {
      const what = cases[i]![0].join(' ');
      expect(r.code, `${what}: ${r.stderr}`).toBe(2);
      expect(r.stderr, what).toMatch(cases[i]![1]);
      expect(r.stderr, what).not.toMatch(NODE_PARSEARGS);
    });
    // an option error names the command's whole usage line
    expect(results[6]!.stderr).toMatch(/\nusage: kiln host install APP .*--version V.*--root DIR.*--json/);
  });
});

describe('help pages', () => {
  it('kiln GROUP --help prints the group\'s commands and what each does, for every group (was "unknown command")', async () => {
    const cmds = await loadCommands();
    const groups = [...new Set(cmds.filter((c) => c.name.includes(' ')).map((c) => c.name.split(' ')[0]!))];
    expect(groups).toEqual(expect.arrayContaining(['release', 'fleet', 'agents', 'deployments', 'host', 'image', 'agent', 'keys']));
    for (const g of groups) {
      for (const argv of [[g, '--help'], [g, '-h'], ['help', g]]) {
        const r = await run(argv);
        // `kiln deployments` is a command too: its page lists the rest of its group
        expect(r.code, `${argv.join(' ')}: ${r.stderr}`).toBe(0);
        for (const c of cmds.filter((c) => c.name.startsWith(`${g} `))) expect(r.stdout, argv.join(' ')).toContain(`${c.name}  `);
        for (const c of cmds.filter((c) => c.name.startsWith(`${g} `))) expect(r.stdout, argv.join(' ')).toContain(c.summary);
      }
    }
    // a group alone is a usage error that shows the same list
    const bare = await kiln(['release']);
    expect(bare.code).toBe(2);
    expect(bare.stdout).toMatch(/^usage: kiln release COMMAND/);
    expect(bare.stdout).toContain('release promote');
  });

  it('every command\'s help page has an example of it and a usage line that names every option it takes', async () => {
    for (const cmd of await loadCommands()) {
      const r = await run([...cmd.name.split(' '), '--help']);
      expect(r.code, cmd.name).toBe(0);
      const usage = r.stdout.split('\n')[0]!;
      expect(usage.startsWith(`usage: kiln ${cmd.name}`), usage).toBe(true);
      for (const name of Object.keys(cmd.options)) expect(usage, `${cmd.name}: --${name} in the usage line`).toMatch(new RegExp(`--${name}(?![\\w-])`));
      const examples = r.stdout.split('\nexamples:\n')[1]?.split('\n\n')[0] ?? '';
      expect(examples, `${cmd.name} has an example`).toMatch(new RegExp(`^  (sudo )?kiln ${cmd.name}( |$)`, 'm'));
    }
  });

  it('kiln demo --help does not offer --home, which the demo never read (it works in a temporary directory)', async () => {
    const r = await run(['demo', '--help']);
    expect(r.stdout).not.toContain('--home');
    const up = await run(['up', '--help']);
    expect(up.stdout).toMatch(/--home DIR +kiln's local directory/);
  });
});
