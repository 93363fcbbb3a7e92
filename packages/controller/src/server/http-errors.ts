import { ERROR_CODES, KilnError, isKilnError } from '@kiln/shared';
import type { FastifyError, FastifyInstance } from 'fastify';

/** Every error leaves the API as `{ error: { code, message } }` with the status the code's registry entry gives. */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | KilnError, req, reply) => {
    let e: KilnError;
    if (isKilnError(err)) e = err;
    else if ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500) {
      // fastify's own refusals: a body that is not JSON, too large, a wrong content type
      e = new KilnError('KILN_REQUEST_INVALID', err.message);
    } else {
      req.log.error({ err }, 'request failed');
      e = new KilnError('KILN_INTERNAL', 'the controller failed on this request; see its log');
    }
    void reply.status(ERROR_CODES[e.code].status).send({ error: { code: e.code, message: e.message } });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'KILN_REQUEST_INVALID', message: `no route ${req.method} ${req.url}; see docs/api.md` } });
  });
}
