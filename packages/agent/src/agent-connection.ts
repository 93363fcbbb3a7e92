import { MAX_FRAME_BYTES, NONCE_HEADER, NONCE_PATTERN, asKilnError, backoffDelay, frame, parseFrame, type Logger, type Message } from '@kiln/shared';
import WebSocket, { type ClientOptions } from 'ws';

export interface ConnectionOptions {
  url: string;
  credential: string;
  instanceId: string;
  log: Logger;
  heartbeatMs: number;
  backoffCapMs: number;
  random: () => number;
  /** e.g. a private CA for wss:// */
  wsOptions?: ClientOptions;
  /** called on every open socket with the nonce the controller's upgrade answer carried ('' when none); returns the hello frame */
  hello: (nonce: string) => Promise<string>;
  onMessage: (msg: Message) => void;
  onState: (connected: boolean) => void;
}

export interface Connection {
  /** sends when connected; a frame for a closed socket is dropped (the next hello carries the state) */
  send(text: string): boolean;
  readonly connected: boolean;
  close(): void;
}

/**
 * The one outbound WebSocket to the controller: heartbeat (a ping every period; a peer silent for
 * two periods is dropped) and reconnect with jittered backoff capped at `backoffCapMs`.
 */
export function connectToController(opts: ConnectionOptions): Connection {
  const log = opts.log.child({ module: 'connection' });
  let ws: WebSocket | undefined;
  let open = false;
  let closed = false;
  let attempt = 0;
  let retry: NodeJS.Timeout | undefined;
  let beat: NodeJS.Timeout | undefined;

  function connect(): void {
    if (closed) return;
    const sock = new WebSocket(opts.url, {
      headers: { authorization: `Bearer ${opts.credential}`, 'x-kiln-instance': opts.instanceId },
      maxPayload: 4 * MAX_FRAME_BYTES,
      handshakeTimeout: 10_000,
      ...opts.wsOptions,
    });
    ws = sock;
    let lastHeard = Date.now();
    const heard = () => (lastHeard = Date.now());
    // The hello signs it: a controller that sends none (an older one, a test double) gets a signature over ''.
    let nonce = '';
    sock.on('upgrade', (res) => {
      const given = res.headers[NONCE_HEADER];
      nonce = typeof given === 'string' && NONCE_PATTERN.test(given) ? given : '';
    });

    sock.on('open', () => {
      heard();
      log.info({ url: opts.url }, 'connected to the controller');
      beat = setInterval(() => {
        if (Date.now() - lastHeard > 2 * opts.heartbeatMs) {
          log.warn({ silentMs: Date.now() - lastHeard }, 'the controller went silent: reconnecting');
          sock.terminate();
          return;
        }
        sock.ping();
      }, opts.heartbeatMs);
      beat.unref();
      // Nothing else goes out before the hello: the controller learns who we are first.
      opts.hello(nonce).then(
        (text) => {
          if (sock.readyState !== WebSocket.OPEN) return;
          sock.send(text);
          open = true;
          opts.onState(true);
        },
        (err) => {
          log.error({ err }, 'cannot build the hello frame: reconnecting');
          sock.terminate();
        },
      );
    });
    sock.on('pong', heard);
    sock.on('ping', heard);
    sock.on('message', (data, isBinary) => {
      heard();
      let msg: Message;
      try {
        msg = parseFrame(isBinary ? (data as Buffer) : data.toString(), 'controller');
      } catch (err) {
        const e = asKilnError(err, 'KILN_FRAME_INVALID');
        log.warn({ code: e.code, err: e.message }, 'refused a frame from the controller');
        sock.send(frame({ type: 'error', error: { code: e.code, message: e.message } }));
        return;
      }
      // A good frame resets the backoff: the connection is known to work both ways. A refused one does
      // not, or a controller speaking another protocol version would be redialled every half second;
      // nor does an error frame (the controller refusing our hello says so before it closes).
      if (msg.type !== 'error') attempt = 0;
      opts.onMessage(msg);
    });
    sock.on('error', (err) => log.warn({ err: err.message }, 'controller connection error'));
    sock.on('close', (code, reason) => {
      clearInterval(beat);
      const was = open;
      open = false;
      if (ws === sock) ws = undefined;
      if (was) opts.onState(false);
      if (closed) return;
      const delay = backoffDelay(attempt++, { baseMs: 500, capMs: opts.backoffCapMs, random: opts.random });
      const why = { code, reason: reason.toString().slice(0, 200), retryInMs: delay };
      // 1008: the controller refused this agent (its credential, its identity key, its fleet's instance limit), which only an operator can fix.
      if (code === 1008) log.error(why, 'the controller refused this agent');
      else log.info(why, 'disconnected from the controller');
      retry = setTimeout(connect, delay);
    });
  }

  connect();
  return {
    send(text) {
      if (!open || !ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(text);
      return true;
    },
    get connected() {
      return open;
    },
    close() {
      closed = true;
      clearTimeout(retry);
      clearInterval(beat);
      const sock = ws;
      if (!sock) return;
      sock.close(1001, 'agent stopping');
      // A peer that does not answer the close handshake must not keep the socket (and the process) alive.
      setTimeout(() => sock.terminate(), 1_000).unref();
    },
  };
}
