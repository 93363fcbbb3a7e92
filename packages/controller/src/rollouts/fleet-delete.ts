import { KilnError, type Logger } from '@kiln/shared';
import type { AgentHub } from '../fleets/agent-hub.js';
import type { FleetRegistry } from '../fleets/fleet-registry.js';
import { TAG, type Provider } from '../providers/provider.js';
import type { Deployments } from './deployments.js';

export interface FleetDeleted {
  fleet: string;
  /** the provider's instances of the fleet, terminated */
  terminated: string[];
  /** images its bakes made, deleted */
  imagesDeleted: string[];
  /** images its bakes made that stay: `--keep-images`, or another fleet launches from them */
  imagesKept: string[];
  /** deployment records removed */
  deployments: number;
}

/**
 * Deletes a fleet while no deployment of it can run: its instances on the provider are terminated,
 * the images its bakes made (tagged `kiln:fleet`) deleted unless kept or used by another fleet, its
 * deployment records and its record removed, its agents disconnected and forgotten (its credential
 * is refused from then on). The channel pointer stays: it belongs to the app's channel in the
 * bucket, which hosts and other fleets may follow. Each step can run again: a delete that failed
 * half-way is finished by the next one.
 */
export function deleteFleet(o: { name: string; keepImages: boolean; fleets: FleetRegistry; deployments: Deployments; hub: AgentHub; provider?: Provider; log: Pick<Logger, 'info'> }): Promise<FleetDeleted> {
  const fleet = o.fleets.get(o.name);
  return o.deployments.exclusive(fleet.name, async () => {
    const done: FleetDeleted = { fleet: fleet.name, terminated: [], imagesDeleted: [], imagesKept: [], deployments: 0 };
    if (fleet.provider !== 'none') {
      const p = o.provider;
      if (p?.name !== fleet.provider) {
        throw new KilnError('KILN_PROVIDER_FAILED', `fleet ${fleet.name} is on the ${fleet.provider} provider and this controller runs ${p ? `the ${p.name} one` : 'none'}: its instances cannot be terminated from here; delete it from a controller that runs ${fleet.provider}`);
      }
      const tagged = await p.describeInstances({ [TAG.fleet]: fleet.name });
      done.terminated = [...new Set([...fleet.groups.flatMap((g) => g.instances), ...tagged.map((i) => i.id)])].sort();
      await p.terminate(done.terminated);
      const owned = await p.describeImages({ tags: { [TAG.fleet]: fleet.name } });
      const others = o.fleets.list().filter((f) => f.name !== fleet.name);
      const inUse = new Set(others.flatMap((f) => [f.image, ...f.groups.map((g) => g.image)]));
      for (const img of owned) {
        if (o.keepImages || inUse.has(img.id)) {
          done.imagesKept.push(img.id);
          continue;
        }
        await p.deleteImage(img.id);
        done.imagesDeleted.push(img.id);
      }
    }
    done.deployments = await o.deployments.removeRecords(fleet.name);
    await o.fleets.remove(fleet.name);
    // After the record: an agent reconnecting meanwhile is refused, not remembered again.
    o.hub.forgetFleet(fleet.name);
    o.log.info({ ...done }, 'fleet deleted');
    return done;
  });
}
