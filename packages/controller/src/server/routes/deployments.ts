import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Deployments } from '../../rollouts/deployments.js';
import { DeploymentCreate, fleetName, parseInput } from '../../fleets/fleet-model.js';
import type { DeploymentBody, DeploymentList } from '../api-types.js';

const Params = z.strictObject({ id: z.string().max(64) });
const Query = z.strictObject({ fleet: fleetName.optional() });

export const deploymentRoutes: FastifyPluginAsync<{ deployments: Deployments }> = async (app, { deployments }) => {
  app.post<{ Reply: DeploymentBody }>('/v1/deployments', async (req, reply) => {
    const input = parseInput(DeploymentCreate, req.body, 'the deployment');
    return reply.status(201).send({ deployment: await deployments.create(input) });
  });
  app.get<{ Reply: DeploymentList }>('/v1/deployments', async (req) => ({ deployments: await deployments.list(parseInput(Query, req.query, 'the query').fleet) }));
  app.get<{ Reply: DeploymentBody }>('/v1/deployments/:id', async (req) => ({ deployment: await deployments.get(parseInput(Params, req.params, 'the deployment id').id) }));
  app.post<{ Reply: DeploymentBody }>('/v1/deployments/:id/cancel', async (req) => ({ deployment: await deployments.cancel(parseInput(Params, req.params, 'the deployment id').id) }));
  app.post<{ Reply: DeploymentBody }>('/v1/deployments/:id/promote', async (req) => ({ deployment: await deployments.promote(parseInput(Params, req.params, 'the deployment id').id) }));
  app.post<{ Reply: DeploymentBody }>('/v1/deployments/:id/abort', async (req) => ({ deployment: await deployments.abort(parseInput(Params, req.params, 'the deployment id').id) }));
};
