import { catchOnly } from './catch-only.js';
import { ERROR_CODES, type ErrorCode } from './error-codes.js';

/** The one error class for every failure a user can cause or fix. Programmer errors stay plain Error. */
export class KilnError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'KilnError';
    this.code = code;
    this.details = opts.details;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

/** Whether `err` is a KilnError, with one of `codes` when any are named. */
export function isKilnError(err: unknown, ...codes: ErrorCode[]): err is KilnError {
  return err instanceof KilnError && (codes.length === 0 || codes.includes(err.code));
}

/** `p`'s value, or `fallback` when it fails with a KilnError of one of `codes`; anything else is thrown. */
export function ifKilnError<T, F>(p: Promise<T>, codes: ErrorCode[], fallback: F): Promise<T | F> {
  return catchOnly(p, (err) => isKilnError(err, ...codes), fallback);
}

/**
 * Wraps anything thrown into a KilnError, keeping a KilnError as it is. An error kiln did not make
 * is KILN_INTERNAL unless the caller knows better (an install step: KILN_INSTALL_FAILED).
 */
export function asKilnError(err: unknown, fallback: ErrorCode = 'KILN_INTERNAL'): KilnError {
  if (err instanceof KilnError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new KilnError(fallback, message, { cause: err });
}

export function describeCode(code: ErrorCode): string {
  return ERROR_CODES[code].meaning;
}
