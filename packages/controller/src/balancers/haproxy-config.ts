/**
 * haproxy.cfg for kiln's local balancer: one frontend and one backend per fleet. Servers are added and
 * removed at run time over the socket; the config lists the ones registered when it is written,
 * because a reload starts a new process from the file and servers added at run time exist only in
 * the old one.
 */

/** What kiln has asked HAProxy to do with a server: `ready` takes traffic; the others are written `disabled`. */
export type ServerAdmin = 'ready' | 'maint' | 'drain';

export interface ServerEntry {
  id: string;
  /** HOST:PORT */
  hostPort: string;
  admin: ServerAdmin;
}

export interface FleetEntry {
  name: string;
  port: number;
  servers: ServerEntry[];
}

export interface HaproxyConfigInput {
  socketPath: string;
  fleets: FleetEntry[];
}

/** HAProxy's own rule for proxy and server names; kiln's fleet names and instance ids fit it. */
export const HAPROXY_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$/;

/**
 * The check options of every server, the config's and the runtime `add server`'s alike.
 *
 * Plain TCP connect checks, not HTTP: the agent already gates an instance on the app's own health
 * URL before kiln registers it, so HAProxy only has to notice a process that stopped listening (a
 * restart, a crash). A server that is down (a new one, a restarted one) is checked every 250 ms and
 * `rise 1` sees it UP on the first check after it listens again; one that is up is checked every
 * second, every 250 ms once a check failed, and `fall 2` takes it out after two misses (~1.3 s).
 * The interval is also a check's timeout: at 300 ms, checks of healthy servers timed out on a busy
 * 2-core machine and took them out (two servers out during a batch of one, measured).
 */
export const SERVER_CHECK = 'check inter 1s fastinter 250 downinter 250 fall 2 rise 1';

/** The frontend's proxy name; the backend is named after the fleet, so runtime commands say `FLEET/ID`. */
export const frontendName = (fleet: string) => `fe_${fleet}`;

export function renderHaproxyConfig(input: HaproxyConfigInput): string {
  const out: string[] = [
    '# Written by kiln; rewritten on every change of fleets. Servers are managed over the stats socket.',
    'global',
    // level admin: add/del server, set state. expose-fd listeners: a reload (-x) takes the listening
    // sockets over from the old process instead of binding again, so no connection is refused meanwhile.
    `  stats socket ${input.socketPath} mode 600 level admin expose-fd listeners`,
    // An old process keeps serving its requests after a reload; a client holding a connection open
    // (a long poll, a WebSocket) must not keep it alive forever.
    '  hard-stop-after 2m',
    '',
    'defaults',
    '  mode http',
    // Loopback connects in microseconds: 2 s only fires on a wedged app. 30 s lets slow requests finish.
    '  timeout connect 2s',
    '  timeout client 30s',
    '  timeout server 30s',
    // The default retry-on is conn-failure only: a request the app never received is retried on
    // another server (redispatch), one it may have started on is never sent twice.
    '  retries 2',
    '  option redispatch',
    // Every response closes its connection (Connection: close). HAProxy 2.6 closes a client's idle
    // keep-alive connection the moment a reload stops the old process, racing the client's next
    // request on it ("other side closed": 21 failed of ~3,300 requests over 10 reloads, measured);
    // 2.6.12 lacks idle-close-on-response. The price, a connect per request, halved a Node load loop's
    // request rate on loopback: a local balancer's fair trade for zero failed requests.
    '  option httpclose',
  ];
  for (const fleet of input.fleets) {
    if (!HAPROXY_NAME.test(fleet.name)) throw new Error(`fleet name ${JSON.stringify(fleet.name)} cannot be an HAProxy proxy name`);
    out.push('', `frontend ${frontendName(fleet.name)}`, `  bind 127.0.0.1:${fleet.port}`, `  default_backend ${fleet.name}`);
    out.push('', `backend ${fleet.name}`, '  balance roundrobin');
    for (const s of fleet.servers) {
      if (!HAPROXY_NAME.test(s.id)) throw new Error(`server id ${JSON.stringify(s.id)} cannot be an HAProxy server name`);
      // A drained or not-yet-ready server stays out of rotation in the new process too.
      out.push(`  server ${s.id} ${s.hostPort} ${SERVER_CHECK}${s.admin === 'ready' ? '' : ' disabled'}`);
    }
  }
  return `${out.join('\n')}\n`;
}
