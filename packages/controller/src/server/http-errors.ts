import { KilnError, isKilnError, type ErrorCode } from '@kiln/shared';
import type { FastifyError, FastifyInstance } from 'fastify';

const STATUS: Partial<Record<ErrorCode, number>> = {
  KILN_UNAUTHORIZED: 401,
  KILN_FORBIDDEN: 403,
  KILN_REQUEST_INVALID: 400,
  KILN_NAME_INVALID: 400,
  KILN_USAGE: 400,
  KILN_FLEET_NOT_FOUND: 404,
  KILN_DEPLOYMENT_NOT_FOUND: 404,
  KILN_IMAGE_NOT_FOUND: 404,
  KILN_INSTANCE_NOT_FOUND: 404,
  KILN_RELEASE_NOT_FOUND: 404,
  KILN_NO_PREVIOUS: 409,
  KILN_FLEET_EXISTS: 409,
  KILN_FLEET_BUSY: 409,
  KILN_SIGNATURE_INVALID: 422,
  KILN_SIGNATURE_UNKNOWN_KEY: 422,
  KILN_MANIFEST_INVALID: 422,
  // the controller runs without a signing key: it cannot move pointers until restarted with one
  KILN_KEY_INVALID: 503,
  KILN_S3_UNREACHABLE: 503,
  KILN_S3_TIMEOUT: 503,
};

/** Every error leaves the API as `{ error: { code, message } }` with a status that matches the code. */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | KilnError, req, reply) => {
    let e: KilnError;
    if (isKilnError(err)) e = err;
    else if ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500) {
      // fastify's own refusals: a body that is not JSON, too large, a wrong content type
      e = new KilnError('KILN_REQUEST_INVALID', err.message);
    } else {
      req.log.error({ err }, 'request failed');
      e = new KilnError('KILN_INSTALL_FAILED', 'the controller failed on this request; see its log');
    }
    const status = STATUS[e.code] ?? ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500 ? (err as FastifyError).statusCode! : 500);
    void reply.status(status).send({ error: { code: e.code, message: e.message } });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'KILN_REQUEST_INVALID', message: `no route ${req.method} ${req.url}; see docs/api.md` } });
  });
}
