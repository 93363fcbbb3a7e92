import { readFileSync } from 'node:fs';

/**
 * The version of @kiln/controller, the package the `kiln` program ships in: read from its
 * package.json (two levels up from both src/cli/ and dist/cli/), only when asked.
 */
export function kilnVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error('@kiln/controller package.json has no version');
  return pkg.version;
}
