import { KilnError, TRANSIENT_S3_CODES, asKilnError, phaseStopwatch, type AgentReport, type Logger } from '@kiln/shared';
import type { AgentHub, HubInstance } from '../fleets/agent-hub.js';
import type { BakeResult } from '../bakes/bake.js';
import { describeTarget, type Deployment, type Fleet, type Group, type TargetRef } from '../fleets/fleet-model.js';
import type { FleetRegistry } from '../fleets/fleet-registry.js';
import { fleetRows } from '../fleets/fleet-view.js';
import { TAG, type BootData, type Provider } from '../providers/provider.js';
import { healthyOn, type RolloutWaiter, type WaitOutcome } from '../fleets/rollout-wait.js';
import { pauseAfterCanary } from './canary-pause.js';
import type { FleetTraffic } from './fleet-traffic.js';
import { soak } from './soak.js';
import type { AlarmWatch } from '../balancers/balancer.js';

export interface GroupRolloutContext {
  record: Deployment;
  provider: Provider;
  fleets: FleetRegistry;
  hub: AgentHub;
  waiter: RolloutWaiter;
  save: (record: Deployment) => Promise<void>;
  movePointer: (app: string, channel: string, release: TargetRef) => Promise<void>;
  /** bakes the release for the fleet (from the base of its image), its builder and image tagged with `tags`, reporting each phase */
  bake: (fleet: Fleet, version: string, tags: Record<string, string>, onPhase: (name: string, ms: number) => void) => Promise<BakeResult>;
  /** what the fleet's instances boot with */
  boot: (fleet: Fleet) => Promise<BootData>;
  /** how long instances get to be running */
  launchTimeoutMs: number;
  log: Logger;
  now: () => Date;
  /** the fleet's balancer: a new group is in it and healthy before the old one drains and stops */
  traffic?: FleetTraffic | undefined;
  /** CloudWatch alarms watched during the soak */
  alarms?: AlarmWatch | undefined;
  /** true once the controller is stopping (a paused canary ends there) */
  stopped?: () => boolean;
}

/** What an instance reported, as a gate's message names it: `1.0.0 with config 2, app not running`. */
const reportedText = (rep: AgentReport | null | undefined) =>
  `${rep?.installed ? describeTarget({ version: rep.installed.version, config: rep.config }) : 'nothing installed'}${rep?.service.active ? '' : ', app not running'}`;

export const groupName = (fleet: string, seq: number) => `${fleet}-v${String(seq).padStart(3, '0')}`;
export const liveGroup = (f: Fleet): Group | undefined => f.groups.find((g) => g.state === 'live');

/** Where a fleet's bakes start from: the base image its current image was baked from, or that image itself. */
export async function bakeBase(provider: Provider, f: Fleet): Promise<string> {
  if (!f.image) throw new KilnError('KILN_IMAGE_NOT_FOUND', `fleet ${f.name} has no image; create it with --image`);
  const [img] = await provider.describeImages({ ids: [f.image] });
  return img?.tags[TAG.baseImage] ?? f.image;
}

/**
 * The immutable procedures, one record each: `bake` and `relaunch` launch a new group (from a
 * freshly baked image, or from the fleet's image whose agents install the release at boot), gate
 * it on health, make it live, stop the old group (kept for `kiln rollback`) and terminate the one
 * before. `heal` replaces drifted instances; `rollback` brings the stopped group back. A failure
 * removes what was launched and leaves the live group live.
 */
export async function runGroupRollout(c: GroupRolloutContext): Promise<Deployment> {
  const r = c.record;
  const log = c.log.child({ deployment: r.id, fleet: r.fleet, strategy: r.strategy, kind: r.kind });
  const began = Date.now();
  const watch = phaseStopwatch('start');
  // Records the phase that ends (the opening moment before the first phase is none).
  const step = async (next: string) => {
    const ended = watch.next(next);
    if (ended.name !== 'start') r.phases.push(ended);
    r.updatedAt = c.now().toISOString();
    await c.save(structuredClone(r));
  };
  const mark = (id: string, s: Deployment['instances'][string]['step'], error?: { code: string; message: string }) =>
    (r.instances[id] = { step: s, batch: 0, ...(error ? { error } : {}), at: c.now().toISOString() });
  const launched: string[] = [];
  const gated = (id: string, o: WaitOutcome) => (o.ok ? mark(id, 'healthy') : mark(id, 'failed', { code: o.code, message: o.message }));

  /**
   * Past maxFailures, why the group failed its gate, instance by instance. When no agent of the
   * group connected at all, the cause is that, not health: KILN_AGENT_UNREACHABLE with the ids.
   */
  function gateFailure(group: string, ids: string[], outcomes: WaitOutcome[], since: number, what: string): KilnError | undefined {
    const failed = ids.flatMap((id, n) => (outcomes[n]!.ok ? [] : [{ id, o: outcomes[n] as Extract<WaitOutcome, { ok: false }> }]));
    // A canary group's failures count with the rest's: one budget for the whole group.
    if (Object.values(r.instances).filter((i) => i.step === 'failed').length <= r.maxFailures) return undefined;
    // What the hub remembers from before `since` (a standby group's last run) does not count.
    const reached = (id: string) => Date.parse(c.hub.get(id)?.connectedAt ?? '') >= since;
    const list = (xs: string[]) => `${xs.slice(0, 10).join(', ')}${xs.length > 10 ? ` and ${xs.length - 10} more` : ''}`;
    if (!ids.some(reached)) {
      return new KilnError(
        'KILN_AGENT_UNREACHABLE',
        `reached 0 of ${ids.length} ${what} of ${group}: no agent connected to this controller within ${r.healthTimeoutMs} ms (${list(ids)}); they run, but their agents call another controller address (the one they were launched with) or cannot start`,
      );
    }
    return new KilnError('KILN_GROUP_UNHEALTHY', `${failed.length} of ${ids.length} ${what} of ${group} failed their health gate (limit ${r.maxFailures}): ${failed.slice(0, 3).map((f) => `${f.id}: ${f.o.code}: ${f.o.message}`).join('; ')}${failed.length > 3 ? `; and ${list(failed.slice(3).map((f) => f.id))}` : ''}`);
  }

  /** Launches `count` instances into `group` and waits for every agent to report the release healthy; the healthy ones (failures within maxFailures left out). */
  async function launchHealthy(fleet: Fleet, group: string, image: string, count: number): Promise<string[]> {
    const since = Date.now();
    const insts = await c.provider.launch({ imageId: image, count, tags: { [TAG.fleet]: fleet.name, [TAG.group]: group, [TAG.app]: fleet.app, [TAG.release]: r.release.version }, boot: await c.boot(fleet) });
    const ids = insts.map((i) => i.id);
    launched.push(...ids);
    ids.forEach((id) => mark(id, 'sent'));
    await c.fleets.update(fleet.name, (f) => ({ ...f, groups: f.groups.map((g) => (g.name === group ? { ...g, instances: [...g.instances, ...ids] } : g)) }));
    await c.provider.waitRunning(ids, { timeoutMs: c.launchTimeoutMs });
    await step('health');
    const outcomes = await Promise.all(
      ids.map((id) =>
        c.waiter.until(
          id,
          (i) => {
            // The error first: a baked release failing its health check at boot has nothing to swap back
            // to, so it stays installed with its app running. And the boot must be over: its last step is
            // the first tree check, before which a baked release may still be in its health check.
            const rep = i?.report;
            const e = rep?.lastError;
            if (e && !TRANSIENT_S3_CODES.has(e.code) && rep?.operation === null) return { ok: false, code: e.code, message: e.message };
            return rep && healthyOn(rep, r.release) && rep.tree.status !== 'unchecked' ? { ok: true } : undefined;
          },
          r.healthTimeoutMs,
          (i) => `${id} ${i?.connected ? `reported ${reportedText(i.report)}` : 'never connected'}, not ${describeTarget(r.release)} healthy, within ${r.healthTimeoutMs} ms`,
        ),
      ),
    );
    ids.forEach((id, n) => gated(id, outcomes[n]!));
    const failure = gateFailure(group, ids, outcomes, since, 'new instances');
    if (failure) throw failure;
    return ids.filter((_, n) => outcomes[n]!.ok);
  }

  /** The new group goes live; the live one stops (standby, for rollback); the standby before it is terminated. */
  async function makeLive(group: string, image: string | null): Promise<void> {
    const before = c.fleets.get(r.fleet);
    const oldLive = before.groups.filter((g) => g.state === 'live' && g.name !== group);
    const oldStandby = before.groups.filter((g) => g.state === 'standby' && g.name !== group);
    const serving = before.groups.find((g) => g.name === group)?.instances.filter((id) => r.instances[id]?.step === 'healthy') ?? [];
    // In the balancer before the record says live: a failure here leaves the old group live, as the record says.
    await c.traffic?.admit(serving);
    await c.fleets.update(r.fleet, (f) => ({
      ...f,
      ...(image ? { image } : {}),
      groups: f.groups.filter((g) => !oldStandby.includes(g)).map((g) => (g.name === group ? { ...g, state: 'live' as const } : oldLive.some((o) => o.name === g.name) ? { ...g, state: 'standby' as const } : g)),
    }));
    await c.fleets.setDesired(r.fleet, r.release);
    await c.traffic?.retire(oldLive.flatMap((g) => g.instances));
    await step('retire');
    await c.provider.stop(oldLive.flatMap((g) => g.instances), { timeoutMs: c.launchTimeoutMs });
    await c.provider.terminate(oldStandby.flatMap((g) => g.instances));
  }

  /**
   * The new instances take traffic next to the old ones; with --soak they must stay healthy (and
   * under --max-error-rate against the old ones) that long before anything old is drained.
   */
  async function serveAndSoak(ids: string[], old: string[]): Promise<void> {
    await c.traffic?.admit(ids);
    if (r.soakMs <= 0) return;
    await step('soak');
    const soaked = await soak({ batch: r.soaks.length, ids, others: old, manifestSha256: r.release.manifestSha256, soakMs: r.soakMs, maxErrorRate: r.maxErrorRate, traffic: c.traffic, alarms: c.alarms, hub: c.hub, stopped: c.stopped });
    // A group is not resumed by the next controller: what it launched is removed, like any failure's.
    if (!soaked) throw new KilnError('KILN_INTERRUPTED', 'the controller stopped during the soak');
    r.soaks.push(soaked.result);
    if (soaked.error) {
      ids.forEach((id) => mark(id, 'failed', { code: soaked.error!.code, message: soaked.error!.message }));
      throw soaked.error;
    }
  }

  /** A new group of the fleet's size, or a canary of N first that pauses until promoted; abort and cancel remove it. */
  async function launchGroup(fleet: Fleet, group: string, image: string): Promise<void> {
    const size = Math.max(1, fleet.size);
    const old = liveGroup(fleet)?.instances ?? [];
    const first = r.canary !== null && r.canary < size ? r.canary : size;
    const canary = await launchHealthy(fleet, group, image, first);
    await serveAndSoak(canary, old);
    if (first === size) return;
    await step('paused');
    const save = async () => {
      r.updatedAt = c.now().toISOString();
      await c.save(structuredClone(r));
    };
    const decision = await pauseAfterCanary({ record: r, save, from: c, canary, mayPromoteItself: canary.length === first });
    if (typeof decision === 'object') throw new KilnError(decision.unhealthy.code, `the canary group ${group} stopped serving while paused: ${decision.unhealthy.message}`);
    // A cancel of a paused group is an abort: half a group cannot stay.
    if (decision !== 'promote') throw new KilnError(decision === 'stopped' ? 'KILN_INTERRUPTED' : 'KILN_DEPLOY_ABORTED', `the canary group ${group} (${first} of ${size}) was ${decision === 'stopped' ? 'left paused by a stopping controller' : `${decision === 'abort' ? 'aborted' : 'cancelled'}: it is removed`}`);
    await step('launch');
    await serveAndSoak(await launchHealthy(c.fleets.get(fleet.name), group, image, size - first), old);
  }

  const end: Partial<Pick<Deployment, 'state' | 'verdict' | 'error' | 'finishedAt'>> = {};
  let newGroup: string | null = null;
  /** a rollback: the standby group went live (past that, its pointer is the fleet's) */
  let swapped = false;
  try {
    let fleet = c.fleets.get(r.fleet);
    if (fleet.provider === 'none') throw new KilnError('KILN_PROVIDER_FAILED', `fleet ${fleet.name} has no provider: only --strategy hotfix reaches its instances`);
    if (r.kind === 'rollback') {
      await rollbackToStandby(fleet);
    } else if (r.kind === 'heal' && (await healInPlace(fleet))) {
      // done: the image already held the release, drifted instances were replaced one by one
    } else {
      let image = fleet.image;
      if (r.strategy === 'bake') {
        await step('bake');
        // Tagged with the deployment: a restarted controller finds the builder of an interrupted bake by it.
        const baked = await c.bake(fleet, r.release.version, { [TAG.deployment]: r.id }, (name, ms) => r.phases.push({ name: `bake:${name}`, ms }));
        image = baked.image.id;
      }
      if (!image) throw new KilnError('KILN_IMAGE_NOT_FOUND', `fleet ${fleet.name} has no image to launch from`);
      r.image = image;
      // Before the launch: relaunched agents install what the channel points to at boot.
      await step('pointer');
      await c.movePointer(r.app, r.channel, r.release);
      await step('launch');
      const seq = fleet.groupSeq + 1;
      newGroup = groupName(fleet.name, seq);
      r.group = newGroup;
      const group: Group = { name: newGroup, image, release: r.release, instances: [], state: 'launching', createdAt: c.now().toISOString() };
      fleet = await c.fleets.update(fleet.name, (f) => ({ ...f, groupSeq: seq, groups: [...f.groups, group] }));
      await launchGroup(fleet, newGroup, image);
      await step('live');
      await makeLive(newGroup, r.strategy === 'bake' ? image : null);
      newGroup = null;
    }
    await step('');
    // A heal that could not reach every instance did not converge the fleet: a script must notice.
    const unreachable = Object.entries(r.instances).filter(([, i]) => i.step === 'unreachable').map(([id]) => id);
    const error = unreachable.length ? { code: 'KILN_AGENT_UNREACHABLE', message: `${unreachable.length} instance(s) were unreachable and not healed: ${unreachable.join(', ')}; no agent of theirs reports to this controller (\`kiln status ${r.fleet}\`)` } : null;
    Object.assign(end, { state: error ? 'failed' : 'succeeded', verdict: verdictOf(unreachable), error });
  } catch (err) {
    const e = asKilnError(err);
    log.error({ err: e, phase: watch.phase }, 'group rollout failed: removing what it launched');
    await c.traffic?.drain(launched).catch((err) => log.error({ err }, 'cannot drain the launched instances out of the balancer'));
    await c.provider.terminate(launched).catch((err) => log.error({ err }, 'cannot terminate the launched instances'));
    if (newGroup) await c.fleets.update(r.fleet, (f) => ({ ...f, groups: f.groups.filter((g) => g.name !== newGroup) })).catch((err) => log.error({ err, group: newGroup }, 'cannot remove the failed group from the fleet'));
    // A rollback that failed before its group went live points the channel back too: the live group's
    // agents follow the pointer while they cannot reach a controller.
    if (r.previous && (r.kind !== 'rollback' || !swapped)) await c.movePointer(r.app, r.channel, r.previous).catch((err) => log.error({ err }, 'cannot restore the channel pointer'));
    Object.assign(end, { state: 'failed', verdict: `failed in phase ${watch.phase}: ${e.message}; the live group stays live`, error: { code: e.code, message: e.message } });
  }
  Object.assign(r, end, { finishedAt: c.now().toISOString(), updatedAt: c.now().toISOString() });
  await c.save(structuredClone(r));
  log.info({ state: r.state, verdict: r.verdict }, 'group rollout over');
  return r;

  function verdictOf(unreachable: string[]): string {
    // The wall time, not a sum of phases: a bake's own phases (bake:launch, …) lie inside the bake phase.
    const total = Date.now() - began;
    const replaced = Object.values(r.instances).filter((i) => i.step === 'healthy').length;
    // A heal that left instances unreachable did not heal the fleet: the verdict opens with that.
    if (unreachable.length) return `not healed: ${unreachable.length} instance(s) unreachable (no agent reports to this controller): ${unreachable.join(', ')}; ${replaced} drifted instance(s) replaced with ${describeTarget(r.release)}`;
    const what = r.kind === 'rollback' ? `group ${r.group} is live again` : r.kind === 'heal' ? `healed: ${replaced} instances replaced` : `group ${r.group} is live`;
    return `${what} with ${describeTarget(r.release)} in ${(total / 1000).toFixed(1)} s`;
  }

  /**
   * Heal when the live group's image already holds the desired release: each drifted instance is
   * replaced by a fresh one of the same image. Returns false when the image is older (then the whole
   * group is replaced from a baked image, unreachable instances with it). Unreachable instances
   * healed in place are reported and fail the heal, not skipped silently.
   */
  async function healInPlace(fleet: Fleet): Promise<boolean> {
    const live = liveGroup(fleet);
    const rows = fleetRows(fleet, c.hub);
    const drifted = rows.filter((x) => x.drift === 'drifted' || x.drift === 'off-image').map((x) => x.instanceId);
    if (live && drifted.length) {
      const [img] = await c.provider.describeImages({ ids: [live.image] });
      if (img?.tags[TAG.version] !== r.release.version || img.tags[TAG.seq] !== String(r.release.seq)) return false;
    }
    for (const row of rows.filter((x) => x.drift === 'unreachable')) mark(row.instanceId, 'unreachable');
    if (!live || drifted.length === 0) return true;
    r.group = live.name;
    r.image = live.image;
    await step('launch');
    const fresh = await launchHealthy(fleet, live.name, live.image, drifted.length);
    await serveAndSoak(fresh, rows.map((x) => x.instanceId).filter((id) => !drifted.includes(id)));
    await c.traffic?.retire(drifted);
    await step('retire');
    await c.provider.terminate(drifted);
    await c.fleets.update(fleet.name, (f) => ({ ...f, groups: f.groups.map((g) => (g.name === live.name ? { ...g, instances: g.instances.filter((id) => !drifted.includes(id)) } : g)) }));
    return true;
  }

  /** Brings the stopped group back: pointer first (its agents must not install the newer release at boot), start, health gate, swap. */
  async function rollbackToStandby(fleet: Fleet): Promise<void> {
    const standby = fleet.groups.filter((g) => g.state === 'standby').at(-1);
    if (!standby) throw new KilnError('KILN_NO_PREVIOUS', `fleet ${fleet.name} has no stopped group to bring back`);
    r.group = standby.name;
    r.image = standby.image;
    await step('pointer');
    await c.movePointer(r.app, r.channel, r.release);
    await step('power-on');
    // What the hub remembers from before the stop does not count: only a report of the restarted agent.
    const since = Date.now();
    await c.provider.start(standby.instances, { timeoutMs: c.launchTimeoutMs });
    await step('health');
    const back = (i: HubInstance | undefined) => !!i && Date.parse(i.connectedAt) >= since;
    const fresh = (i: HubInstance | undefined) => back(i) && !!i?.connected && healthyOn(i.report, r.release);
    const late = (id: string) => (i: HubInstance | undefined) =>
      `${id} ${back(i) ? `reported ${reportedText(i!.report)}, not ${describeTarget(r.release)} healthy,` : 'never connected to this controller since it was started'} within ${r.healthTimeoutMs} ms`;
    const outcomes = await Promise.all(standby.instances.map((id) => c.waiter.until(id, (i) => (fresh(i) ? { ok: true } : undefined), r.healthTimeoutMs, late(id))));
    standby.instances.forEach((id, n) => gated(id, outcomes[n]!));
    const failure = gateFailure(standby.name, standby.instances, outcomes, since, 'instances brought back');
    const serving = standby.instances.filter((_, n) => outcomes[n]!.ok);
    // In the balancer before the record says live: one that does not get healthy there fails the rollback like the gate.
    const admitted = failure ? undefined : await c.traffic?.admit(serving).then(() => undefined, (err: unknown) => asKilnError(err));
    if (failure || admitted) {
      await c.traffic?.drain(serving).catch((err) => log.error({ err }, 'cannot drain the group brought back'));
      await c.provider.stop(standby.instances, { timeoutMs: c.launchTimeoutMs }).catch((err) => log.error({ err }, 'cannot stop the group brought back'));
      throw failure ?? admitted;
    }
    await step('live');
    swapped = true;
    const current = liveGroup(fleet);
    await c.fleets.update(fleet.name, (f) => ({ ...f, image: standby.image, groups: f.groups.map((g) => (g.name === standby.name ? { ...g, state: 'live' as const } : g.name === current?.name ? { ...g, state: 'standby' as const } : g)) }));
    await c.fleets.setDesired(fleet.name, r.release);
    await c.traffic?.retire(current?.instances ?? []);
    await step('retire');
    if (current) await c.provider.stop(current.instances, { timeoutMs: c.launchTimeoutMs });
  }
}
