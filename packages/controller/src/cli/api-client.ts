import { readFile } from 'node:fs/promises';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import path from 'node:path';
import { ERROR_CODES, KilnError, type ErrorCode } from '@kiln/shared';
import { z } from 'zod';
import { str, type CliContext, type Flags } from './cli-context.js';
import { localControllerFile, readLocalController } from '../local/local-files.js';

export interface ApiClient {
  /** the controller's base URL */
  url: string;
  /** where agents connect (ws:// or wss://) */
  agentsUrl: string;
  /** the certificate to trust for https/wss, when the local controller serves TLS */
  ca: string | undefined;
  /** whether this is the controller `kiln up` runs for this directory (.kiln/controller.json names it) */
  local: boolean;
  get<T>(route: string): Promise<T>;
  post<T>(route: string, body?: unknown): Promise<T>;
  patch<T>(route: string, body: unknown): Promise<T>;
  delete<T>(route: string): Promise<T>;
  /** GETs a newline-delimited answer, one line at a time, until it ends or `signal` aborts (then it resolves). */
  lines(route: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void>;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EPIPE']);

/**
 * The operator API for CLI commands: the controller URL and operator token from flags, then
 * KILN_CONTROLLER / KILN_TOKEN, then the `.kiln/controller.json` that `kiln up` writes.
 * Errors come back as KilnErrors with the API's own code.
 */
export async function openApi(flags: Flags, ctx: CliContext, timeoutMs = 15_000): Promise<ApiClient> {
  const env = ctx.io.env;
  const local = await readLocalController(ctx.home);
  const url = (str(flags, 'controller') ?? env.KILN_CONTROLLER ?? local?.url)?.replace(/\/+$/, '');
  const token = str(flags, 'token') ?? env.KILN_TOKEN ?? local?.operatorToken;
  const tokenFrom = str(flags, 'token') ? '--token' : env.KILN_TOKEN ? 'KILN_TOKEN' : localControllerFile(ctx.home);
  if (!url) throw new KilnError('KILN_CONTROLLER_UNREACHABLE', 'no controller to talk to: start one with `kiln up` (in this directory), or pass --controller URL --token TOKEN (env KILN_CONTROLLER, KILN_TOKEN)');
  if (!/^https?:\/\/[^/]+$/.test(url)) throw new KilnError('KILN_USAGE', `--controller ${url}: use http://HOST:PORT or https://HOST:PORT`);
  if (!token) throw new KilnError('KILN_UNAUTHORIZED', `no operator token for ${url}: pass --token TOKEN (env KILN_TOKEN); \`kiln up\` prints it`);
  // The local certificate is trusted only when talking to the local controller.
  const isLocal = local?.url === url;
  const caFile = isLocal ? local!.ca : undefined;
  const ca = caFile ? await readFile(caFile, 'utf8') : undefined;
  const agentsUrl = isLocal ? local!.agentsUrl : `${url.replace(/^http/, 'ws')}/v1/agents`;

  function open(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', route: string, payload: string | undefined, onResponse: (res: IncomingMessage) => void): ClientRequest {
    const target = new URL(route, `${url}/`);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(
      target,
      {
        method,
        ...(ca ? { ca } : {}),
        headers: { authorization: `Bearer ${token}`, accept: 'application/json', ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
        timeout: timeoutMs,
      },
      onResponse,
    );
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    return req;
  }

  /** The whole answer as JSON: its body on a 2xx, else the API's error as a KilnError. */
  function answer<T>(res: IncomingMessage, method: string, route: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', (err) => reject(unreachable(url!, err)));
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        let parsed: unknown;
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (err) {
          if (!(err instanceof SyntaxError)) throw err;
          return reject(new KilnError('KILN_CONTROLLER_UNREACHABLE', `${url} answered ${method} ${route} with HTTP ${status} and no JSON: is it a kiln controller?`));
        }
        if (status >= 200 && status < 300) return resolve(parsed as T);
        const err = apiError(parsed, status, `${method} ${route}`);
        // Only the CLI knows where its token came from, and so where the right one is.
        if (err.code === 'KILN_UNAUTHORIZED') {
          return reject(
            new KilnError(
              'KILN_UNAUTHORIZED',
              `the controller at ${url} does not know the operator token from ${tokenFrom}: use the one its \`kiln up\` made (operatorToken in the .kiln/controller.json of the directory it runs in), with --token TOKEN or KILN_TOKEN`,
              { cause: err, details: { status } },
            ),
          );
        }
        reject(err);
      });
    });
  }

  function call<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', route: string, body?: unknown): Promise<T> {
    const payload = method === 'POST' || method === 'PATCH' ? JSON.stringify(body ?? {}) : undefined;
    return new Promise<T>((resolve, reject) => {
      const req = open(method, route, payload, (res) => answer<T>(res, method, route).then(resolve, reject));
      req.on('error', (err) => reject(unreachable(url!, err)));
      req.end(payload);
    });
  }

  function lines(route: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req = open('GET', route, undefined, (res) => {
        if ((res.statusCode ?? 0) >= 300) return void answer(res, 'GET', route).then(() => resolve(), reject);
        // A follow may be quiet for long: only the wait for the answer has a deadline.
        req.setTimeout(0);
        let held = '';
        res.setEncoding('utf8');
        res.on('data', (text: string) => {
          const parts = (held + text).split('\n');
          held = parts.pop()!;
          for (const p of parts) if (p) onLine(p);
        });
        res.on('end', () => resolve());
        res.on('error', (err) => (signal?.aborted ? resolve() : reject(unreachable(url!, err))));
      });
      req.on('error', (err) => (signal?.aborted ? resolve() : reject(unreachable(url!, err))));
      signal?.addEventListener('abort', () => req.destroy(), { once: true });
      req.end();
    });
  }

  return { url, agentsUrl, ca: caFile, local: isLocal, get: (route) => call('GET', route), post: (route, body) => call('POST', route, body), patch: (route, body) => call('PATCH', route, body), delete: (route) => call('DELETE', route), lines };
}

function unreachable(url: string, err: Error): KilnError {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (UNREACHABLE.has(code)) return new KilnError('KILN_CONTROLLER_UNREACHABLE', `cannot reach the controller at ${url} (${code}): is \`kiln up\` running? (or pass --controller URL)`, { cause: err });
  return new KilnError('KILN_CONTROLLER_UNREACHABLE', `cannot talk to the controller at ${url}: ${err.message}`, { cause: err });
}

/** The API's `{error: {code, message}}` as a KilnError with the same code. */
function apiError(body: unknown, status: number, what: string): KilnError {
  const e = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (typeof e?.code === 'string' && e.code in ERROR_CODES && typeof e.message === 'string') return new KilnError(e.code as ErrorCode, e.message, { details: { status } });
  return new KilnError('KILN_CONTROLLER_UNREACHABLE', `the controller answered ${what} with HTTP ${status} and no kiln error`);
}
