import { hasErrno, KilnError, pollUntil } from '@kiln/shared';
import { checkPortFree } from '../system/free-port.js';

// A HAProxy killed a moment ago still holds its listeners for a few ms after it is reaped (measured:
// up to 8 ms); a port taken by another program stays taken, so this only delays that error.
const RELEASE_MS = 500;

/**
 * Each named fleet's frontend port (not held by a HAProxy being taken over) must be free now: a
 * taken one would fail HAProxy's start with a vaguer error. `portsFile` is where the ports are recorded.
 */
export async function checkFrontendPorts(fleets: Map<string, number>, names: Iterable<string>, portsFile: string): Promise<void> {
  for (const name of names) {
    const port = fleets.get(name)!;
    let taken: unknown;
    await pollUntil({
      timeoutMs: RELEASE_MS,
      intervalMs: 10,
      check: async () => {
        try {
          await checkPortFree(port);
          return true;
        } catch (err) {
          if (!hasErrno(err, 'EADDRINUSE', 'EACCES')) throw err;
          taken = err;
          return false;
        }
      },
      timeoutError: () =>
        new KilnError('KILN_PORT_IN_USE', `port ${port} of fleet ${name}'s HAProxy frontend (recorded in ${portsFile}) is taken by another process: stop it, or remove the fleet's line from that file for a new port`, {
          cause: taken,
        }),
    });
  }
}
