import { readFile } from 'node:fs/promises';
import { parseEnvFile } from './env-file.js';

// The app gets a plain environment, never the credentials of whoever started the supervisor or the agent.
const PASS = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];

export const plainEnv = (from: NodeJS.ProcessEnv = process.env): Record<string, string> =>
  Object.fromEntries(PASS.filter((k) => from[k] !== undefined).map((k) => [k, from[k]!]));

/** The variables of an environment file kiln wrote (none without one). */
export const readEnvFile = async (file: string | undefined): Promise<Record<string, string>> => (file ? parseEnvFile(await readFile(file, 'utf8'), file) : {});
