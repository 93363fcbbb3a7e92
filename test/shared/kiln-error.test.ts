import { describe, expect, it } from 'vitest';
import { ERROR_CODES, KilnError, asKilnError } from '@kiln/shared';

describe('asKilnError', () => {
  it('labels an error kiln did not make KILN_INTERNAL, not KILN_INSTALL_FAILED (a controller 500 read as an install failure)', () => {
    const cause = new TypeError('x is not a function');
    const e = asKilnError(cause);
    expect([e.code, e.message, e.cause]).toEqual(['KILN_INTERNAL', 'x is not a function', cause]);
    expect(ERROR_CODES[e.code].status).toBe(500);
  });

  it('keeps a KilnError as it is, and takes the code a caller names for anything else', () => {
    const own = new KilnError('KILN_NO_SPACE', 'disk full');
    expect(asKilnError(own, 'KILN_INSTALL_FAILED')).toBe(own);
    expect(asKilnError('a string', 'KILN_INSTALL_FAILED')).toMatchObject({ code: 'KILN_INSTALL_FAILED', message: 'a string' });
  });
});
