import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The rules `npm run lint:deps` (and so CI) checks, run the way it runs them: the repo's config,
// dependency-cruiser's CLI, its default report (one line per violation, naming the rule).
const top = fileURLToPath(new URL('../../', import.meta.url));
const CONFIG = path.join(top, '.dependency-cruiser.cjs');
const CRUISE = path.join(top, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');

function cruise(cwd: string, dirs: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CRUISE, ...dirs, '--config', CONFIG], { cwd }, (err, stdout, stderr) => {
      resolve({ code: err ? Number(err.code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

// One small tree holding one legal import of each kind next to each way of breaking a rule.
const TREE: Record<string, string> = {
  'tsconfig.depcruise.json': JSON.stringify({
    compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true },
    include: ['packages/*/src'],
  }),
  'packages/controller/src/cli/cli-piece.ts': `import { kind } from '../providers/provider.js';\nexport const piece = kind;\n`,
  // A command may use the CLI's shared pieces; it must not import another command.
  'packages/controller/src/cli/commands/deploy.ts': `import { piece } from '../cli-piece.js';\nexport const deploy = piece;\n`,
  'packages/controller/src/cli/commands/status.ts': `import { deploy } from './deploy.js';\nexport const status = deploy;\n`,
  // Upward: providers/ sits below cli/.
  'packages/controller/src/providers/provider.ts': `export const kind = 'process';\n`,
  'packages/controller/src/providers/launch.ts': `import { piece } from '../cli/cli-piece.js';\nexport const launch = piece;\n`,
  // Another package's files reached by a relative path, into its src/ and into its dist/.
  'packages/controller/src/system/by-path.ts':
    `import { fail } from '../../../shared/src/errors/fail.js';\nimport { built } from '../../../shared/dist/index.js';\nexport const both = [fail, built];\n`,
  // A cycle closed by a lazy import, the way cli.ts and the demo command once hid theirs.
  'packages/shared/src/errors/fail.ts': `import { code } from './codes.js';\nexport const fail = () => code();\n`,
  'packages/shared/src/errors/codes.ts': `export const code = async () => (await import('./fail.js')).fail;\n`,
  'packages/shared/dist/index.js': `export const built = 1;\n`,
};

describe('the dependency rules (npm run lint:deps)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'kiln-deps-'));
    for (const [file, text] of Object.entries(TREE)) {
      await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
      await writeFile(path.join(dir, file), text);
    }
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fail an upward import, a cycle, a command importing a command and a path into another package, each by its rule', async () => {
    const { code, out } = await cruise(dir, ['packages/*/src']);
    expect(out).toContain(
      'error controller-providers-no-upward: packages/controller/src/providers/launch.ts → packages/controller/src/cli/cli-piece.ts',
    );
    expect(out).toMatch(/error no-cycles: packages\/shared\/src\/errors\/(fail|codes)\.ts → /);
    expect(out).toContain(
      'error cli-command-no-command: packages/controller/src/cli/commands/status.ts → packages/controller/src/cli/commands/deploy.ts',
    );
    expect(out).toContain('error no-other-package-internals: packages/controller/src/system/by-path.ts → packages/shared/src/errors/fail.ts');
    expect(out).toContain('error no-other-package-internals: packages/controller/src/system/by-path.ts → packages/shared/dist/index.js');
    // Those five and nothing else: the legal imports beside them pass.
    expect(out).toContain('x 5 dependency violations (5 errors, 0 warnings)');
    expect(code).not.toBe(0);
  });

  it("pass on kiln's own tree", async () => {
    const { code, out } = await cruise(top, ['packages/*/src', 'test', 'scripts']);
    expect(out).toContain('no dependency violations found');
    expect(code).toBe(0);
  }, 60_000);
});
