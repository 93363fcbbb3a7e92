import type { ServerResponse } from 'node:http';
import { InstanceId, KilnError, MAX_LOG_LINES, ProcessName, type Logger } from '@kiln/shared';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { AgentHub } from '../../fleets/agent-hub.js';
import { fleetName, parseInput } from '../../fleets/fleet-model.js';
import type { FleetRegistry } from '../../fleets/fleet-registry.js';
import { createLogStreams } from '../../fleets/log-streams.js';
import type { LogItem } from '../api-types.js';

const Params = z.strictObject({ name: fleetName });
const LogQuery = z.strictObject({
  instance: InstanceId.optional(),
  process: ProcessName.optional(),
  lines: z
    .string()
    .regex(/^\d{1,5}$/, 'a whole number')
    .transform(Number)
    .refine((n) => n <= MAX_LOG_LINES, `at most ${MAX_LOG_LINES}`)
    .default(100),
  follow: z.enum(['true', 'false']).default('false'),
});

/** Past this much output waiting for a slow client, lines are dropped (and counted) until it catches up. */
const CLIENT_BUFFER_BYTES = 1024 * 1024;

export interface LogRouteOptions {
  fleets: FleetRegistry;
  hub: AgentHub;
  log: Logger;
}

/**
 * `GET /v1/fleets/:name/logs`: the app's output from every connected instance of the fleet (or the
 * one named) as newline-delimited JSON, `{instance, process, line}` a line and `{instance, error}`
 * when an instance's stream fails; over once every agent has sent its lines (no follow) or when the
 * client goes away, which stops the agents' follows.
 */
export const logRoutes: FastifyPluginAsync<LogRouteOptions> = async (app, { fleets, hub, log }) => {
  const streams = createLogStreams({ hub, log });
  const open = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    streams.close();
    for (const res of open) res.end();
  });

  app.get('/v1/fleets/:name/logs', async (req, reply) => {
    const fleet = fleets.get(parseInput(Params, req.params, 'the fleet name').name);
    const q = parseInput(LogQuery, req.query, 'the query');
    let targets: string[];
    if (q.instance) {
      const inst = hub.get(q.instance);
      const ofFleet = inst ? inst.fleet === fleet.name : fleet.groups.some((g) => g.instances.includes(q.instance!));
      if (!ofFleet) throw new KilnError('KILN_INSTANCE_NOT_FOUND', `fleet ${fleet.name} has no instance ${q.instance}; \`kiln status ${fleet.name}\` lists them`);
      if (!inst?.connected) throw new KilnError('KILN_AGENT_NOT_CONNECTED', `the agent of ${q.instance} is not connected to this controller, so its logs cannot be read now; \`kiln status ${fleet.name}\` shows when it was last seen`);
      targets = [q.instance];
    } else {
      targets = hub
        .instances(fleet.name)
        .filter((i) => i.connected)
        .map((i) => i.instanceId)
        .sort();
      if (!targets.length) throw new KilnError('KILN_AGENT_NOT_CONNECTED', `no agent of fleet ${fleet.name} is connected to this controller, so there is no output to read; \`kiln status ${fleet.name}\` shows its instances`);
    }

    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store' });
    open.add(res);
    const dropped = new Map<string, { instance: string; process: string; n: number }>();
    const write = (item: LogItem) => res.write(JSON.stringify(item) + '\n');
    const sayDropped = () => {
      for (const d of dropped.values()) write({ instance: d.instance, process: d.process, line: `[kiln] ${d.n} line${d.n === 1 ? '' : 's'} skipped: the client read too slowly` });
      dropped.clear();
    };
    res.on('drain', sayDropped);

    const stops: Array<() => void> = [];
    let running = targets.length;
    let over = false;
    const finish = () => {
      if (over) return;
      over = true;
      for (const stop of stops) stop();
      open.delete(res);
      if (!res.writableEnded) {
        sayDropped();
        res.end();
      }
    };
    // The client went away (Ctrl-C on a follow): the agents stop following.
    res.on('close', finish);
    for (const instance of targets) {
      stops.push(
        streams.open(
          { instanceId: instance, process: q.process, lines: q.lines, follow: q.follow === 'true' },
          {
            onLines(process, lines) {
              if (over) return;
              for (const line of lines) {
                if (res.writableLength > CLIENT_BUFFER_BYTES) {
                  const key = `${instance}\n${process}`;
                  const d = dropped.get(key) ?? { instance, process, n: 0 };
                  d.n++;
                  dropped.set(key, d);
                } else write({ instance, process, line });
              }
            },
            onEnd(error) {
              if (error && !over) write({ instance, error });
              if (--running === 0) finish();
            },
          },
        ),
      );
    }
    return reply;
  });
};
