import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ifMissing } from '@kiln/shared';

export const DEFAULT_DEBIAN_MIRROR = 'http://deb.debian.org/debian';

/**
 * The archive URI that serves `suite` in apt sources text, deb822 (`.sources`) or one-line
 * (`.list`) format, or null. Security and other suites (`bookworm-security`) do not count.
 */
export function mirrorFromAptSources(text: string, suite: string): string | null {
  // deb822: paragraphs of `Key: value` lines.
  for (const para of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of para.split('\n')) {
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim());
    }
    if (!fields.has('uris')) continue;
    if (fields.get('enabled')?.toLowerCase() === 'no') continue;
    if (!(fields.get('types') ?? 'deb').split(/\s+/).includes('deb')) continue;
    if (!(fields.get('suites') ?? '').split(/\s+/).includes(suite)) continue;
    const uri = fields.get('uris')!.split(/\s+/).find((u) => /^https?:\/\//.test(u));
    if (uri) return uri.replace(/\/+$/, '');
  }
  // one-line: deb [options] URI suite components...
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, '').trim();
    const [type, uri, lineSuite] = line.split(/\s+/);
    if (type === 'deb' && uri && /^https?:\/\//.test(uri) && lineSuite === suite) return uri.replace(/\/+$/, '');
  }
  return null;
}

/** The Debian mirror this host's apt already uses for `suite`, else deb.debian.org. */
export async function hostDebianMirror(suite = 'bookworm', aptDir = '/etc/apt'): Promise<string> {
  const files = [path.join(aptDir, 'sources.list')];
  const dir = path.join(aptDir, 'sources.list.d');
  for (const name of (await ifMissing(readdir(dir), [])).sort()) {
    if (name.endsWith('.sources') || name.endsWith('.list')) files.push(path.join(dir, name));
  }
  for (const file of files) {
    const text = await ifMissing(readFile(file, 'utf8'), '');
    const found = mirrorFromAptSources(text, suite);
    if (found) return found;
  }
  return DEFAULT_DEBIAN_MIRROR;
}
