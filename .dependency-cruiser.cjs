// The rooms of each package and the one direction imports run in (DESIGN.md, "Rooms"; README, "Layout").
// `npm run lint:deps` checks them; a violation names its rule. Rooms are listed top to bottom: a file
// may import from its own room and from any room below it, never from one above.
const ROOMS = {
  controller: ['cli', 'local', 'server', 'rollouts', 'bakes', 'fleets', 'balancers', 'providers', 'system'],
  shared: ['protocol', 'install', 'service', 'config', 'release', 's3', 'system', 'errors'],
};

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function upwardRules(pkg, rooms) {
  return rooms.slice(1).map((room, i) => ({
    name: `${pkg}-${room}-no-upward`,
    comment: `${pkg}: ${room}/ sits below ${rooms.slice(0, i + 1).join(', ')}; it must not import them`,
    severity: 'error',
    from: { path: `^packages/${pkg}/src/${escape(room)}/` },
    to: { path: `^packages/${pkg}/src/(${rooms.slice(0, i + 1).map(escape).join('|')})/` },
  }));
}

module.exports = {
  forbidden: [
    {
      name: 'no-cycles',
      comment: 'an import cycle (dynamic imports count): split the shared piece out into a lower room',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...Object.entries(ROOMS).flatMap(([pkg, rooms]) => upwardRules(pkg, rooms)),
    {
      name: 'controller-rooms-no-entry',
      comment: "a room never imports the package's entry files (index.ts, main.ts): they only wire",
      severity: 'error',
      from: { path: '^packages/[^/]+/src/.+/' },
      to: { path: '^packages/[^/]+/src/(index|main)\\.ts$' },
    },
    {
      name: 'cli-command-no-command',
      comment: 'a command never imports another command or the CLI entry (cli.ts): shared pieces go in cli/ or below',
      severity: 'error',
      from: { path: '^packages/controller/src/cli/commands/([^/]+)\\.ts$' },
      to: { path: '^packages/controller/src/cli/(commands/|cli\\.ts$)', pathNot: '^packages/controller/src/cli/commands/$1\\.ts$' },
    },
    {
      name: 'engines-no-agent-package',
      comment: "the server and its engines do not import @kiln/agent: what both sides need lives in @kiln/shared",
      severity: 'error',
      from: { path: '^packages/controller/src/(server|rollouts|bakes|fleets)/' },
      to: { path: '^packages/agent/' },
    },
    {
      name: 'shared-imports-no-package',
      comment: '@kiln/shared is the bottom: it imports neither the agent nor the controller',
      severity: 'error',
      from: { path: '^packages/shared/' },
      to: { path: '^packages/(agent|controller)/' },
    },
    {
      name: 'agent-no-controller',
      comment: 'the agent never imports the controller',
      severity: 'error',
      from: { path: '^packages/agent/' },
      to: { path: '^packages/controller/' },
    },
    {
      name: 'no-other-package-internals',
      comment: "another package is reached through its exports (@kiln/NAME, @kiln/NAME/ENTRY), never by a path into its src/ or dist/",
      severity: 'error',
      from: { path: '^(packages/([^/]+)|test|scripts)/' },
      // @kiln/NAME resolves through the package's exports to its dist/: only a relative path is a way in.
      to: { path: '^packages/([^/]+)/(src|dist)/', pathNot: '^packages/$2/', dependencyTypes: ['local'] },
    },
    {
      name: 'no-unresolvable',
      comment: "an import that does not resolve (a deep @kiln/NAME/... path the package does not export, or a typo)",
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    // Another package's dist/ is where its exports resolve: seen, not followed.
    doNotFollow: { path: '(^|/)(node_modules|dist)/' },
    exclude: { path: '\\.d\\.ts$' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.depcruise.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'default'] },
    combinedDependencies: false,
  },
};
