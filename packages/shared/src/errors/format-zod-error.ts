import type { z } from 'zod';

/** Formats a zod error as one line a person can act on: "field: problem; field: problem". */
export function formatZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}
