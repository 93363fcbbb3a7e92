// What a first run from a fresh clone meets (issue 16, item 12): pnpm links each package's bin at
// install, before anything is built, so a bin that points into dist/ made `npm run demo` open with
// "WARN Failed to create bin … dist/main.js" lines on every fresh checkout.
import { access, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const top = fileURLToPath(new URL('../', import.meta.url));

it('every package bin is a source file, not a build output (pnpm warned "Failed to create bin" on a fresh clone)', async () => {
  const bins: Array<[string, string]> = [];
  for (const dir of ['.', ...(await readdir(path.join(top, 'packages'))).map((p) => `packages/${p}`)]) {
    const pkg = JSON.parse(await readFile(path.join(top, dir, 'package.json'), 'utf8'));
    const entries: Record<string, string> = typeof pkg.bin === 'string' ? { [pkg.name]: pkg.bin } : (pkg.bin ?? {});
    for (const file of Object.values(entries)) bins.push([dir, path.posix.join(dir, file)]);
  }
  expect(bins.length).toBeGreaterThan(0);
  for (const [dir, file] of bins) {
    // dist/ is what `tsc -b` writes: absent at install time on a fresh clone
    expect(file, `${dir}'s bin`).not.toMatch(/(^|\/)dist\//);
    await expect(access(path.join(top, file)), `${file} exists`).resolves.toBeUndefined();
  }
});
