// Regression (issue 16, item 14): fastify's own refusals (a parameter too long, a body that is not
// JSON or too large, a wrong content type, an unknown route) came in fastify's shape
// (`{"error":"Bad Request","code":"FST_ERR_…"}`) or under a code whose status was not the answer's.
// Each is sent here over real HTTP the way curl sends it; each answer must be kiln's documented
// shape with a kiln code whose registry status is the status of the answer.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '@kiln/shared';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { makeKeys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let ctl: TestController;

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startController({ s3, keys });
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});

/** One raw request: the status and the body as text and as JSON (undefined when it is not JSON). */
async function send(method: string, path: string, init: { type?: string; body?: string } = {}): Promise<{ status: number; json: any; text: string }> {
  const res = await fetch(ctl.url + path, {
    method,
    headers: { authorization: `Bearer ${OPERATOR}`, ...(init.type ? { 'content-type': init.type } : {}) },
    ...(init.body !== undefined ? { body: init.body } : {}),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

describe("fastify's own refusals come in kiln's error shape, with a kiln code and that code's status", () => {
  const fleet = JSON.stringify({ name: 'web', app: 'web' });
  const json = 'application/json';
  const cases: Array<{ what: string; method: string; path: string; type?: string; body?: string; status: number; code: ErrorCode; says: RegExp }> = [
    { what: 'a 5,000-character path parameter', method: 'GET', path: `/v1/fleets/${'a'.repeat(5_000)}`, status: 414, code: 'KILN_URL_TOO_LONG', says: /100 characters/ },
    { what: 'a 5,000-character version of a release', method: 'GET', path: `/v1/releases/web/${'1'.repeat(5_000)}`, status: 414, code: 'KILN_URL_TOO_LONG', says: /100 characters/ },
    { what: "a form body (curl -d's default content type)", method: 'POST', path: '/v1/fleets', type: 'application/x-www-form-urlencoded', body: 'name=web&app=web', status: 415, code: 'KILN_CONTENT_TYPE_UNSUPPORTED', says: /application\/json/ },
    { what: 'a JSON text sent as text/plain', method: 'POST', path: '/v1/fleets', type: 'text/plain', body: fleet, status: 415, code: 'KILN_CONTENT_TYPE_UNSUPPORTED', says: /text\/plain/ },
    { what: 'a body that is not JSON', method: 'POST', path: '/v1/fleets', type: json, body: '{"name": "web", ', status: 400, code: 'KILN_REQUEST_INVALID', says: /JSON/ },
    { what: 'an empty JSON body', method: 'POST', path: '/v1/fleets', type: json, body: '', status: 400, code: 'KILN_REQUEST_INVALID', says: /empty/ },
    { what: 'a body over 1 MiB', method: 'POST', path: '/v1/fleets', type: json, body: JSON.stringify({ name: 'web', app: 'web', pad: 'x'.repeat(1024 * 1024) }), status: 413, code: 'KILN_REQUEST_TOO_LARGE', says: /1048576 bytes/ },
    { what: 'an unknown route', method: 'GET', path: '/v1/nothing-here', status: 404, code: 'KILN_ROUTE_NOT_FOUND', says: /no route GET \/v1\/nothing-here/ },
    { what: 'an unknown method on a known path', method: 'DELETE', path: '/v1/deployments', status: 404, code: 'KILN_ROUTE_NOT_FOUND', says: /no route DELETE \/v1\/deployments/ },
  ];
  it.each(cases)('$what → $status $code', async ({ method, path, type, body, status, code, says }) => {
    const res = await send(method, path, { ...(type ? { type } : {}), ...(body !== undefined ? { body } : {}) });
    expect(res.status, res.text.slice(0, 300)).toBe(status);
    // exactly the documented shape: no fastify fields beside it
    expect(res.json).toEqual({ error: { code, message: expect.any(String) } });
    expect(ERROR_CODES[code].status).toBe(status);
    expect(res.json.error.message).toMatch(says);
    // nothing was created on the way
    expect((await ctl.api('GET', '/v1/fleets')).body.fleets).toEqual([]);
  });

  it('the same requests with the right shape and size still work', async () => {
    const created = await send('POST', '/v1/fleets', { type: 'application/json', body: JSON.stringify({ name: 'web', app: 'web' }) });
    expect(created.status, created.text).toBe(201);
    const charset = await send('GET', '/v1/fleets/web', { type: 'application/json; charset=utf-8' });
    expect(charset.status).toBe(200);
    const longest = await send('GET', `/v1/fleets/${'a'.repeat(63)}`);
    expect([longest.status, longest.json.error.code]).toEqual([404, 'KILN_FLEET_NOT_FOUND']);
  });
});
