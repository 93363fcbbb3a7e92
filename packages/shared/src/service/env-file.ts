import { KilnError } from '../errors/kiln-error.js';

/**
 * An environment file as systemd's EnvironmentFile= reads it: `KEY="value"` per variable, the value
 * in double quotes with \\ \" \$ \` escaped, newlines kept (a PEM key spans lines). The process
 * supervisor reads the same file back with parseEnvFile.
 */
export function renderEnvFile(env: Record<string, string>): string {
  return Object.entries(env)
    .map(([k, v]) => `${k}="${v.replace(/[\\"$`]/g, (c) => `\\${c}`)}"\n`)
    .join('');
}

export function parseEnvFile(text: string, source: string): Record<string, string> {
  const env: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    if (text[i] === '\n') {
      i++;
      continue;
    }
    const m = /^([A-Za-z_][A-Za-z0-9_]*)="/.exec(text.slice(i, i + 300));
    if (!m) throw new KilnError('KILN_CONFIG_INVALID', `${source} is not an environment file kiln wrote (at byte ${i})`);
    i += m[0].length;
    let value = '';
    for (;;) {
      const c = text[i++];
      if (c === undefined) throw new KilnError('KILN_CONFIG_INVALID', `${source}: the value of ${m[1]} has no closing quote`);
      if (c === '"') break;
      value += c === '\\' ? (text[i++] ?? '') : c;
    }
    env[m[1]!] = value;
  }
  return env;
}
