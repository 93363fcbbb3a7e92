/**
 * `p`'s value, or `fallback` when it fails with an error `expected` accepts (an absent file, an
 * absent object); anything else is thrown: a catch names the error it expects.
 */
export async function catchOnly<T, F>(p: Promise<T>, expected: (err: unknown) => boolean, fallback: F): Promise<T | F> {
  try {
    return await p;
  } catch (err) {
    if (expected(err)) return fallback;
    throw err;
  }
}
