import { request as httpRequest, createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';

/**
 * What the proxy does to a download of release contents: a GET of an artifact (`…/artifact.tar.gz`,
 * format 1) or of a content object (`…/objects/…`, format 2); everything else passes through.
 * - `pass`: forwards it untouched
 * - `truncate`: sends the real headers (with the full Content-Length) and the first half of the body,
 *   then destroys the socket
 * - `stall`: sends the real headers and the first `stallAfter` bytes, then sends nothing more and
 *   keeps the connection open
 */
export type ArtifactFault = 'pass' | 'truncate' | 'stall';

export interface FaultProxy {
  endpoint: string;
  fault: ArtifactFault;
  /** bytes sent before a stall */
  stallAfter: number;
  /** how many more damaged GETs get the fault before the proxy passes them (Infinity: all) */
  faultsLeft: number;
  /** content downloads (artifact or content-object GETs) seen, whatever the fault */
  artifactGets: number;
  /** every request seen, as `METHOD /path?query` */
  requests: string[];
  close(): Promise<void>;
}

const isArtifactGet = (req: IncomingMessage) => req.method === 'GET' && (/\/artifact\.tar\.gz(\?|$)/.test(req.url ?? '') || /\/objects\/[a-z0-9-]+\/(pack-)?[0-9a-f]{64}(\?|$)/.test(req.url ?? ''));

function readAll(stream: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

/**
 * An HTTP proxy on 127.0.0.1 in front of `target` (an http://host:port endpoint) that damages artifact
 * downloads (or the requests `damages` picks); on `port` when given (an endpoint that was down comes back).
 */
export async function startFaultProxy(target: string, fault: ArtifactFault = 'pass', opts: { port?: number; damages?: (req: IncomingMessage) => boolean } = {}): Promise<FaultProxy> {
  const damages = opts.damages ?? isArtifactGet;
  const up = new URL(target);
  const sockets = new Set<Socket>();
  const proxy: FaultProxy = {
    endpoint: '',
    fault,
    stallAfter: 1024,
    faultsLeft: Infinity,
    artifactGets: 0,
    requests: [],
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server: Server = createServer((req, res) => {
    proxy.requests.push(`${req.method} ${req.url}`);
    const damage = damages(req) && proxy.faultsLeft > 0 ? proxy.fault : 'pass';
    if (damage !== 'pass') proxy.faultsLeft--;
    if (isArtifactGet(req)) proxy.artifactGets++;
    // The Host header is part of the SigV4 signature: it is forwarded as the client sent it.
    const out = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      // 206: a ranged GET of a content object (format 2)
      if (damage === 'pass' || (upRes.statusCode !== 200 && upRes.statusCode !== 206)) {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
        return;
      }
      void readAll(upRes).then((body) => {
        res.writeHead(upRes.statusCode!, upRes.headers);
        if (damage === 'truncate') {
          res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.socket?.destroy());
        } else {
          res.write(body.subarray(0, Math.min(proxy.stallAfter, body.length - 1)));
          // …and nothing more: the socket stays open until the client gives up or close() runs.
        }
      });
    });
    out.on('error', () => res.socket?.destroy());
    req.pipe(out);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve));
  proxy.endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return proxy;
}

export interface SilentServer {
  endpoint: string;
  /** connections accepted so far */
  accepted: number;
  close(): Promise<void>;
}

/** Accepts TCP connections on 127.0.0.1 and never answers a byte (a hung endpoint). */
export async function startSilentServer(): Promise<SilentServer> {
  const sockets = new Set<Socket>();
  const silent: SilentServer = {
    endpoint: '',
    accepted: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = createNetServer((s) => {
    silent.accepted++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  silent.endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return silent;
}
