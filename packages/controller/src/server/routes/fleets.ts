import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Deployments } from '../../rollouts/deployments.js';
import { FleetCreate, RollbackCreate, fleetName, parseInput, type Fleet } from '../../fleets/fleet-model.js';
import type { FleetRegistry } from '../../fleets/fleet-registry.js';
import { fleetRows, summarize } from '../../fleets/fleet-view.js';
import type { AgentHub } from '../../fleets/agent-hub.js';
import type { Provider } from '../../providers/provider.js';
import { KilnError } from '@kiln/shared';
import type { DeploymentBody, FleetBody, FleetCreated, FleetDrift, FleetInstances, FleetList, PublicFleet } from '../api-types.js';

const Params = z.strictObject({ name: fleetName });

/** The public view of a fleet: never its credential digest. */
export function publicFleet(f: Fleet): PublicFleet {
  const { agentCredentialSha256: _, ...rest } = f;
  return rest;
}

export const fleetRoutes: FastifyPluginAsync<{ fleets: FleetRegistry; hub: AgentHub; deployments: Deployments; provider?: Provider }> = async (app, { fleets, hub, deployments, provider }) => {
  const fleetOf = (params: unknown) => fleets.get(parseInput(Params, params, 'the fleet name').name);

  app.post<{ Reply: FleetCreated }>('/v1/fleets', async (req, reply) => {
    const input = parseInput(FleetCreate, req.body, 'the fleet');
    if (input.provider !== 'none') {
      if (provider?.name !== input.provider) throw new KilnError('KILN_REQUEST_INVALID', `provider: this controller runs ${provider ? `the ${provider.name} provider` : 'no provider'}, not ${input.provider}`);
      // A process fleet without an image starts from the plain base image.
      if (!input.image && provider.defaultImage) input.image = (await provider.defaultImage()).id;
      if (!input.image) throw new KilnError('KILN_REQUEST_INVALID', `image: a fleet on the ${provider.name} provider needs the image its instances launch from`);
      const [img] = await provider.describeImages({ ids: [input.image] });
      if (!img) throw new KilnError('KILN_IMAGE_NOT_FOUND', `no image ${input.image} on the ${provider.name} provider; \`kiln images\` lists them`);
    }
    // A new fleet wants what its channel points to now.
    const { fleet, agentCredential } = await fleets.create(input, await deployments.pointed(input.app, input.channel));
    return reply.status(201).send({ fleet: publicFleet(fleet), agentCredential });
  });
  app.get<{ Reply: FleetList }>('/v1/fleets', async () => ({ fleets: fleets.list().map(publicFleet) }));
  app.get<{ Reply: FleetBody }>('/v1/fleets/:name', async (req) => ({ fleet: publicFleet(fleetOf(req.params)) }));
  app.get<{ Reply: FleetInstances }>('/v1/fleets/:name/instances', async (req) => {
    const fleet = fleetOf(req.params);
    const rows = fleetRows(fleet, hub);
    return { fleet: publicFleet(fleet), instances: rows, summary: summarize(rows) };
  });
  app.get<{ Reply: FleetDrift }>('/v1/fleets/:name/drift', async (req) => {
    const fleet = fleetOf(req.params);
    const rows = fleetRows(fleet, hub);
    return { fleet: publicFleet(fleet), drifted: rows.filter((r) => r.drift !== 'in-sync'), summary: summarize(rows) };
  });
  app.post<{ Reply: DeploymentBody }>('/v1/fleets/:name/rollback', async (req, reply) => {
    const fleet = fleetOf(req.params);
    const opts = parseInput(RollbackCreate, req.body, 'the rollback');
    return reply.status(201).send({ deployment: await deployments.rollback(fleet.name, opts) });
  });
};
