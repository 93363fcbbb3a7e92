import { readFile } from 'node:fs/promises';
import path from 'node:path';

/** Undoes the octal escapes mountinfo uses for space, tab, newline and backslash. */
function unescapeMountPath(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points of this process's mount namespace at or below `dir`, deepest first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const base = path.resolve(dir);
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const found = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const point = unescapeMountPath(field);
    if (point === base || point.startsWith(`${base}/`)) found.add(point);
  }
  return [...found].sort((a, b) => b.length - a.length);
}
