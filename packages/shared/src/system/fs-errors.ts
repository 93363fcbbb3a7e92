import { catchOnly } from '../errors/catch-only.js';

/** Whether `err` is a system error with one of `codes` (`ENOENT`, `ESRCH`, …). */
export function hasErrno(err: unknown, ...codes: string[]): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && codes.includes(code);
}

/** `p`'s value, or `fallback` when it fails with one of the system error `codes`; any other failure is thrown. */
export function ifErrno<T, F>(p: Promise<T>, codes: string[], fallback: F): Promise<T | F> {
  return catchOnly(p, (err) => hasErrno(err, ...codes), fallback);
}

/**
 * `p`'s value, or `fallback` when the path it reads does not exist (ENOENT). Any other failure
 * (EACCES, EIO, ENOTDIR, …) is thrown: an unreadable path is not an absent one.
 */
export function ifMissing<T, F>(p: Promise<T>, fallback: F): Promise<T | F> {
  return ifErrno(p, ['ENOENT'], fallback);
}
