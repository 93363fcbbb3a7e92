import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import type { ErrorCode } from '../errors/error-codes.js';
import { formatZodError } from '../errors/format-zod-error.js';
import { KilnError, isKilnError } from '../errors/kiln-error.js';

export interface ReadJsonFileOptions {
  /** the code of the error when the file exists but is not JSON or does not match the schema */
  code: ErrorCode;
  /** what the file is, for the message ("the agent config"); the path is named either way */
  what?: string;
  /**
   * the code of the error when the file exists but cannot be read (EACCES, EISDIR), for a caller
   * that treats it like a bad file; without it that read error is thrown as it is, so that an
   * unreadable file is never taken for a bad one and rebuilt or discarded
   */
  unreadable?: ErrorCode;
}

/**
 * A JSON file read through a zod schema: undefined when the file does not exist (ENOENT), a
 * KilnError with `code` when it is not JSON or does not match. Any other read error is rethrown
 * (or is a KilnError with `unreadable`). A caller for whom a missing file is an error says so itself.
 */
export async function readJsonFile<T>(file: string, schema: z.ZodType<T>, opts: ReadJsonFileOptions): Promise<T | undefined> {
  const name = opts.what ? `${opts.what} ${file}` : file;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (!opts.unreadable) throw cause;
    throw new KilnError(opts.unreadable, `cannot read ${name}: ${(cause as Error).message}`, { cause });
  }
  return parseJson(text, schema, { code: opts.code, what: name });
}

/**
 * JSON text (a file's, an object's from the bucket, a frame's) through a zod schema: a KilnError with
 * `code` naming `what` when it is not JSON or does not match, never a bare SyntaxError or ZodError.
 */
export function parseJson<T>(text: string, schema: z.ZodType<T>, opts: { code: ErrorCode; what: string }): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    if (!(cause instanceof SyntaxError)) throw cause;
    throw new KilnError(opts.code, `${opts.what} is not JSON: ${cause.message}`, { cause });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new KilnError(opts.code, `${opts.what} is invalid: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

/**
 * A file that is only a hint (a status another process rewrites, the port an earlier start used):
 * its value, or undefined when it is missing, unreadable, not JSON or does not match. The caller
 * already has an answer for "no file", and a bad hint means the same.
 */
export async function peekJsonFile<T>(file: string, schema: z.ZodType<T>): Promise<T | undefined> {
  try {
    return await readJsonFile(file, schema, { code: 'KILN_STATE_INVALID', unreadable: 'KILN_STATE_INVALID' });
  } catch (err) {
    if (isKilnError(err, 'KILN_STATE_INVALID')) return undefined;
    throw err;
  }
}
