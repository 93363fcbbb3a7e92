import { isKilnError, type KilnError } from '@kiln/shared';

/** The KilnError `p` rejects with; anything else (a success, another error) fails the test. */
export async function failure(p: Promise<unknown>): Promise<KilnError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isKilnError(err)) throw new Error(`expected a KilnError, got ${err === undefined ? 'success' : String(err)}`);
  return err;
}
