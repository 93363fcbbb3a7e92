/** A period with ±`spread` jitter (0.2 = ±20%), so that agents started together do not poll together. */
export function jittered(periodMs: number, random: () => number, spread = 0.2): number {
  return Math.round(periodMs * (1 - spread + 2 * spread * random()));
}
