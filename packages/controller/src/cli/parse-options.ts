import { parseArgs } from 'node:util';
import { KilnError } from '@kiln/shared';
import type { OptionDef } from './cli-command.js';
import type { Flags } from './cli-context.js';
import { didYouMean } from './did-you-mean.js';

const label = (name: string, o: OptionDef) => `--${name}${o.value ? ` ${o.value}` : ''}`;

/**
 * A command line's options and arguments, or KILN_USAGE in kiln's words: an unknown option names
 * the closest ones (never Node's "To specify a positional argument starting with a '-'…"), a
 * missing value says what goes there. `--app --json` is a missing value, not an app named "--json".
 */
export function parseOptions(args: string[], options: Record<string, OptionDef>): { flags: Flags; positionals: string[] } {
  // Lenient first, to see every option as typed; strict once each one is known good.
  const { tokens } = parseArgs({ args, options, allowPositionals: true, strict: false, tokens: true });
  for (const t of tokens) {
    if (t.kind !== 'option') continue;
    const def = options[t.name];
    if (!def) {
      const long = Object.keys(options);
      const near = t.rawName.startsWith('--') ? didYouMean(t.name, long).map((n) => `--${n}`) : [];
      const hint = near.length ? `did you mean ${near.join(' or ')}?` : `the options are ${long.map((n) => `--${n}`).join(', ')}`;
      throw new KilnError('KILN_USAGE', `unknown option ${t.rawName}; ${hint}`);
    }
    if (def.type === 'string' && (t.value === undefined || (!t.inlineValue && t.value.startsWith('-')))) {
      throw new KilnError('KILN_USAGE', `${t.rawName} needs a value: ${label(t.name, def)}${t.value ? ` (a value starting with "-" goes as --${t.name}=${t.value})` : ''}`);
    }
    if (def.type === 'boolean' && t.value !== undefined) throw new KilnError('KILN_USAGE', `${t.rawName} takes no value: ${t.rawName}, not ${t.rawName}=${t.value}`);
  }
  const parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  return { flags: parsed.values as Flags, positionals: parsed.positionals };
}
