import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import type { ErrorCode } from '../errors/error-codes.js';
import { formatZodError } from '../errors/format-zod-error.js';
import { KilnError } from '../errors/kiln-error.js';

export interface ReadJsonFileOptions {
  /** the code of the error when the file exists but is not JSON or does not match the schema */
  code: ErrorCode;
  /** what the file is, for the message ("the agent config"); the path is named either way */
  what?: string;
}

/**
 * A JSON file read through a zod schema: undefined when the file does not exist (ENOENT), a
 * KilnError with `code` when it is not JSON or does not match. Any other read error is rethrown.
 */
export async function readJsonFile<T>(file: string, schema: z.ZodType<T>, opts: ReadJsonFileOptions): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const name = opts.what ? `${opts.what} ${file}` : file;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new KilnError(opts.code, `${name} is not JSON: ${(cause as Error).message}`, { cause });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new KilnError(opts.code, `${name} is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}
