/** What a load loop saw: answers by status, failures by message, the bodies' first words. */
export interface LoadSeen {
  ok: number;
  failed: number;
  /** status or error message → how many */
  failures: Map<string, number>;
  /** the body of each 200, counted (the demo app names its version in it) */
  bodies: Map<string, number>;
}

/**
 * `clients` loops of GET `url`, one request at a time each, until stopped: a client of a fleet's
 * endpoint. Anything but a 200 is a failure, counted by its status or error.
 */
export function loadLoop(url: string, clients = 4): { seen: LoadSeen; stop(): Promise<LoadSeen>; reset(): void } {
  const fresh = (): LoadSeen => ({ ok: 0, failed: 0, failures: new Map(), bodies: new Map() });
  let seen = fresh();
  let running = true;
  const count = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  const client = async () => {
    while (running) {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
        const body = await res.text();
        if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
        seen.ok++;
        count(seen.bodies, body.replace(/ \(pid \d+.*\)/, '').trim());
      } catch (err) {
        seen.failed++;
        count(seen.failures, (err as Error).message);
      }
    }
  };
  const loops = Array.from({ length: clients }, client);
  return {
    get seen() {
      return seen;
    },
    reset: () => void (seen = fresh()),
    async stop() {
      running = false;
      await Promise.all(loops);
      return seen;
    },
  };
}
