import { timingSafeEqual } from 'node:crypto';
import { KilnError, sha256Hex } from '@kiln/shared';
import type { FastifyInstance } from 'fastify';
import type { FleetRegistry } from '../fleets/fleet-registry.js';

/** Who a bearer token is: an operator, an agent of a fleet, or nobody. */
export function identify(token: string | undefined, operatorTokens: string[], fleets: FleetRegistry): 'operator' | 'agent' | 'unknown' {
  if (!token) return 'unknown';
  const digest = Buffer.from(sha256Hex(Buffer.from(token)));
  // Digests of equal length, compared in constant time.
  if (operatorTokens.some((t) => timingSafeEqual(Buffer.from(sha256Hex(Buffer.from(t))), digest))) return 'operator';
  return fleets.byAgentCredential(token) ? 'agent' : 'unknown';
}

export const bearer = (header: string | undefined) => /^Bearer (\S+)$/.exec(header ?? '')?.[1];

/** The operator API: checked before any work; an agent credential gets 403, none or a wrong one 401. */
export function requireOperator(app: FastifyInstance, operatorTokens: string[], fleets: FleetRegistry): void {
  app.addHook('onRequest', async (req) => {
    const token = bearer(req.headers.authorization);
    const who = identify(token, operatorTokens, fleets);
    if (who === 'agent') throw new KilnError('KILN_FORBIDDEN', 'an agent credential cannot call the operator API');
    if (who !== 'operator') {
      throw new KilnError(
        'KILN_UNAUTHORIZED',
        token
          ? 'this operator token is not known to this controller: use the one `kiln up` made (operatorToken in its .kiln/controller.json; Authorization: Bearer TOKEN)'
          : 'an operator credential is required (Authorization: Bearer TOKEN; `kiln up` prints it)',
      );
    }
  });
}
