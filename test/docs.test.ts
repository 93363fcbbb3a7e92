import { readFile, readdir, stat } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '@kiln/shared';

const top = new URL('../', import.meta.url);

describe('docs', () => {
  it('docs/errors.md documents every error code with its HTTP status and meaning, and no code that does not exist', async () => {
    const doc = await readFile(new URL('docs/errors.md', top), 'utf8');
    const documented = [...doc.matchAll(/^\| `(KILN_[A-Z0-9_]+)` \|.*\|$/gm)].map((m) => m[0]);
    const registry = Object.entries(ERROR_CODES).map(([code, { status, meaning }]) => `| \`${code}\` | ${status} | ${meaning} |`);
    expect(documented.sort()).toEqual(registry.sort());
  });

  it('every file README.md and docs/ link to exists', async () => {
    const docs = (await readdir(new URL('docs/', top))).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`);
    for (const page of ['README.md', 'BENCHMARKS.md', ...docs]) {
      const text = await readFile(new URL(page, top), 'utf8');
      for (const [, link] of text.matchAll(/\]\(([^)#:]+)(?:#[^)]*)?\)/g)) {
        await expect(stat(new URL(link!, new URL(page, top))), `${page} links to ${link}`).resolves.toBeTruthy();
      }
    }
  });
});
