import { ConfigChange, KilnError } from '@kiln/shared';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { FleetConfigs } from '../../fleets/fleet-config.js';
import { fleetName, parseInput } from '../../fleets/fleet-model.js';
import type { FleetRegistry } from '../../fleets/fleet-registry.js';
import type { ConfigBody, ConfigHistory } from '../api-types.js';

const Params = z.strictObject({ name: fleetName });

/** A fleet's config (docs/config.md): its current version, a change published as the next one, its history. */
export const fleetConfigRoutes: FastifyPluginAsync<{ fleets: FleetRegistry; configs: FleetConfigs }> = async (app, { fleets, configs }) => {
  const fleetOf = (params: unknown) => fleets.get(parseInput(Params, params, 'the fleet name').name);

  app.get<{ Reply: ConfigBody }>('/v1/fleets/:name/config', async (req) => {
    const fleet = fleetOf(req.params);
    const config = await configs.current(fleet);
    if (!config) throw new KilnError('KILN_CONFIG_NOT_FOUND', `fleet ${fleet.name} has no config yet: \`kiln config set ${fleet.name} KEY=VALUE\` publishes its first version`);
    return { config };
  });
  app.post<{ Reply: ConfigBody }>('/v1/fleets/:name/config', async (req, reply) => {
    const fleet = fleetOf(req.params);
    const change = parseInput(ConfigChange, req.body, 'the config change');
    return reply.status(201).send({ config: await configs.publish(fleet, change) });
  });
  app.get<{ Reply: ConfigHistory }>('/v1/fleets/:name/config/history', async (req) => ({ versions: await configs.history(fleetOf(req.params)) }));
};
