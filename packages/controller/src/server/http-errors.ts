import { ERROR_CODES, KilnError, isKilnError } from '@kiln/shared';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** The API's body limit: fastify refuses a larger body before any route sees it. */
export const BODY_LIMIT = 1024 * 1024;
/** The longest path parameter the router matches: every kiln name and id is shorter (names: 63). */
export const MAX_PARAM_LENGTH = 100;

/**
 * fastify's own refusals, by their FST_ code: each becomes the kiln code whose status is the one
 * fastify meant (413, 414, 415 stay what they are), with a message that says what to send instead.
 * A refusal not listed is KILN_REQUEST_INVALID with fastify's message.
 */
const FASTIFY_REFUSALS: Record<string, (err: FastifyError, req: FastifyRequest) => KilnError> = {
  FST_ERR_CTP_BODY_TOO_LARGE: () => new KilnError('KILN_REQUEST_TOO_LARGE', `the body is over the API's limit of ${BODY_LIMIT} bytes; a kiln request body is a small JSON object`),
  FST_ERR_CTP_INVALID_MEDIA_TYPE: (_err, req) =>
    new KilnError('KILN_CONTENT_TYPE_UNSUPPORTED', `a body of content-type ${JSON.stringify(req.headers['content-type'] ?? '')} is not accepted: send JSON with content-type: application/json`),
  FST_ERR_MAX_PARAM_LENGTH: () => new KilnError('KILN_URL_TOO_LONG', `a path parameter is over ${MAX_PARAM_LENGTH} characters, longer than any kiln name or id; docs/api.md gives their patterns`),
};

function fromFastify(err: FastifyError, req: FastifyRequest): KilnError {
  const known = FASTIFY_REFUSALS[err.code];
  return known ? known(err, req) : new KilnError('KILN_REQUEST_INVALID', err.message);
}

function send(reply: FastifyReply, e: KilnError): void {
  void reply.status(ERROR_CODES[e.code].status).send({ error: { code: e.code, message: e.message } });
}

/**
 * For fastify's `frameworkErrors` option: what the router refuses before any route or hook runs
 * (a path parameter over the length limit, a URL that does not decode). Without it fastify answers
 * in its own shape.
 */
export function frameworkErrors(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  send(reply, fromFastify(err, req));
}

/** Every error leaves the API as `{ error: { code, message } }` with the status the code's registry entry gives. */
export function installErrorHandler(app: FastifyInstance): void {
  // Bodies are JSON only: fastify would otherwise hand a text/plain body to the routes as a string.
  app.removeContentTypeParser('text/plain');
  app.setErrorHandler((err: FastifyError | KilnError, req, reply) => {
    let e: KilnError;
    if (isKilnError(err)) e = err;
    else if ((err as FastifyError).statusCode && (err as FastifyError).statusCode! < 500) e = fromFastify(err as FastifyError, req);
    else {
      req.log.error({ err }, 'request failed');
      e = new KilnError('KILN_INTERNAL', 'the controller failed on this request; see its log');
    }
    send(reply, e);
  });
  app.setNotFoundHandler((req, reply) => {
    send(reply, new KilnError('KILN_ROUTE_NOT_FOUND', `no route ${req.method} ${req.url.length > 200 ? `${req.url.slice(0, 200)}…` : req.url}; docs/api.md lists the routes`));
  });
}
