import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import type { Deployments } from '../../rollouts/deployments.js';
import { FleetCreate, FleetUpdate, RollbackCreate, fleetName, parseInput, type Fleet } from '../../fleets/fleet-model.js';
import { deleteFleet } from '../../rollouts/fleet-delete.js';
import type { FleetRegistry } from '../../fleets/fleet-registry.js';
import { fleetRows, summarize } from '../../fleets/fleet-view.js';
import type { AgentHub } from '../../fleets/agent-hub.js';
import type { Provider } from '../../providers/provider.js';
import type { Balancer } from '../../balancers/balancer.js';
import { KilnError } from '@kiln/shared';
import type { DeploymentBody, FleetBody, FleetCreated, FleetDeleted, FleetDrift, FleetInstances, FleetList, PublicFleet } from '../api-types.js';

const Params = z.strictObject({ name: fleetName });
const DeleteQuery = z.strictObject({ keepImages: z.enum(['true', 'false']).default('false') });

export interface FleetRouteOptions {
  fleets: FleetRegistry;
  hub: AgentHub;
  deployments: Deployments;
  provider?: Provider;
  /** the fleet's load balancer, for its endpoint */
  balancerFor?: (f: Fleet) => Balancer | undefined;
  /** after a fleet was created or deleted (HAProxy's frontends follow) */
  fleetsChanged?: () => Promise<void>;
}

export const fleetRoutes: FastifyPluginAsync<FleetRouteOptions> = async (app, { fleets, hub, deployments, provider, balancerFor, fleetsChanged }) => {
  const fleetOf = (params: unknown) => fleets.get(parseInput(Params, params, 'the fleet name').name);
  /** The public view of a fleet: never its credential digest, nor the salt its credential is derived with; its endpoint, if it has a balancer. */
  const publicFleet = (f: Fleet): PublicFleet => {
    const { agentCredentialSha256: _digest, credentialSalt: _salt, ...rest } = f;
    let endpoint: string | null = null;
    try {
      endpoint = balancerFor?.(f)?.endpoint ?? null;
    } catch (err) {
      app.log.warn({ err, fleet: f.name }, 'cannot tell the fleet\'s balancer');
    }
    return { ...rest, endpoint };
  };

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
    const { fleet, agentCredential } = await fleets.create(input, await deployments.pointed(input.app, input.channel, input.name));
    await fleetsChanged?.();
    return reply.status(201).send({ fleet: publicFleet(fleet), agentCredential });
  });
  app.get<{ Reply: FleetList }>('/v1/fleets', async () => ({ fleets: fleets.list().map(publicFleet) }));
  app.get<{ Reply: FleetBody }>('/v1/fleets/:name', async (req) => ({ fleet: publicFleet(fleetOf(req.params)) }));
  app.patch<{ Reply: FleetBody }>('/v1/fleets/:name', async (req) => {
    const fleet = fleetOf(req.params);
    const change = parseInput(FleetUpdate, req.body, 'the fleet change');
    await checkUpdate(fleet, change);
    // Not under a rollout: a bake or relaunch in flight reads the fleet's size, image and channel.
    const next = await deployments.exclusive(fleet.name, () => fleets.update(fleet.name, (f) => ({ ...f, ...change })));
    app.log.info({ fleet: fleet.name, change }, 'fleet changed');
    return { fleet: publicFleet(next) };
  });
  app.delete<{ Reply: FleetDeleted }>('/v1/fleets/:name', async (req) => {
    const { name } = fleetOf(req.params);
    const { keepImages } = parseInput(DeleteQuery, req.query, 'the query');
    const deleted = await deleteFleet({ name, keepImages: keepImages === 'true', fleets, deployments, hub, log: app.log, ...(provider ? { provider } : {}) });
    await fleetsChanged?.();
    return deleted;
  });
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
  /** A change the fleet can take: an image on its provider, a target group on ec2, a channel no other fleet of the app follows. */
  async function checkUpdate(fleet: Fleet, change: FleetUpdate): Promise<void> {
    const noProvider = (field: string) => new KilnError('KILN_REQUEST_INVALID', `${field}: fleet ${fleet.name} has no provider (its instances are agents started elsewhere), so it launches nothing`);
    // A fleet without a provider launches nothing, but its size bounds the agents it admits (KILN_INSTANCE_LIMIT).
    if (change.image !== undefined) {
      if (fleet.provider === 'none') throw noProvider('image');
      if (provider?.name !== fleet.provider) throw new KilnError('KILN_REQUEST_INVALID', `image: fleet ${fleet.name} is on the ${fleet.provider} provider, which this controller does not run`);
      const [img] = await provider.describeImages({ ids: [change.image] });
      if (!img) throw new KilnError('KILN_IMAGE_NOT_FOUND', `no image ${change.image} on the ${provider.name} provider; \`kiln images\` lists them`);
    }
    if (change.targetGroup && fleet.provider !== 'ec2') throw new KilnError('KILN_REQUEST_INVALID', `targetGroup: fleet ${fleet.name} is on the ${fleet.provider} provider; only ec2 fleets have target groups`);
    const sharing = change.channel && fleets.list().find((f) => f.name !== fleet.name && f.app === fleet.app && f.channel === change.channel);
    if (sharing) throw new KilnError('KILN_CHANNEL_TAKEN', `channel: fleet ${sharing.name} already follows ${fleet.app}/${change.channel}; two fleets on one channel would move each other's instances: pick another channel`);
  }

  app.post<{ Reply: DeploymentBody }>('/v1/fleets/:name/rollback', async (req, reply) => {
    const fleet = fleetOf(req.params);
    const opts = parseInput(RollbackCreate, req.body, 'the rollback');
    return reply.status(201).send({ deployment: await deployments.rollback(fleet.name, opts) });
  });
};
