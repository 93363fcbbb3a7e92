import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { BakeCreate, type Bakes } from '../../bakes/bakes.js';
import type { Deployments } from '../../rollouts/deployments.js';
import { RollbackCreate, fleetName, parseInput } from '../../fleets/fleet-model.js';
import type { FleetRegistry } from '../../fleets/fleet-registry.js';
import type { Provider } from '../../providers/provider.js';
import type { BakeBody, DeploymentBody, ImageList, InstanceList } from '../api-types.js';

const FleetParams = z.strictObject({ name: fleetName });
const BakeParams = z.strictObject({ id: z.string().max(64) });
const Query = z.strictObject({ fleet: fleetName.optional() });
const HealCreate = RollbackCreate.omit({ batch: true, version: true });

/** The provider's images and instances, standalone bakes, and heal. */
export const providerRoutes: FastifyPluginAsync<{ provider: Provider; bakes: Bakes; deployments: Deployments; fleets: FleetRegistry }> = async (app, { provider, bakes, deployments, fleets }) => {
  app.get<{ Reply: ImageList }>('/v1/images', async () => ({ provider: provider.name, images: await provider.describeImages({}) }));
  app.get<{ Reply: InstanceList }>('/v1/instances', async (req) => {
    const { fleet } = parseInput(Query, req.query, 'the query');
    // The provider knows tags, not fleets: a fleet that does not exist is KILN_FLEET_NOT_FOUND, not an empty list.
    if (fleet) fleets.get(fleet);
    return { provider: provider.name, instances: await provider.describeInstances(fleet ? { 'kiln:fleet': fleet } : {}) };
  });
  app.post<{ Reply: BakeBody }>('/v1/bakes', async (req, reply) => reply.status(201).send({ bake: await bakes.start(parseInput(BakeCreate, req.body, 'the bake')) }));
  app.get<{ Reply: BakeBody }>('/v1/bakes/:id', async (req) => ({ bake: await bakes.get(parseInput(BakeParams, req.params, 'the bake id').id) }));
  app.post<{ Reply: DeploymentBody }>('/v1/fleets/:name/heal', async (req, reply) => {
    const { name } = parseInput(FleetParams, req.params, 'the fleet name');
    return reply.status(201).send({ deployment: await deployments.heal(name, parseInput(HealCreate, req.body, 'the heal')) });
  });
};
