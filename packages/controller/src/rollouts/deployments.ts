import { randomBytes } from 'node:crypto';
import { KilnError, findPointer, promoteRelease, showRelease, type BoundConfig, type DocStore, type Logger, type PrivateKey, type PublicKey, type ReleaseStore } from '@kiln/shared';
import type { AgentHub } from '../fleets/agent-hub.js';
import { Deployment, sameTarget, type DeploymentCreate, type TargetRef } from '../fleets/fleet-model.js';
import type { FleetConfigs } from '../fleets/fleet-config.js';
import type { FleetRegistry } from '../fleets/fleet-registry.js';
import { reapBakes } from '../bakes/bake.js';
import { runGroupRollout, type GroupRolloutContext } from './group-rollout.js';
import { TAG } from '../providers/provider.js';
import { runRollout } from './rollout.js';
import { createRolloutWaiter } from '../fleets/rollout-wait.js';
import { fleetRows } from '../fleets/fleet-view.js';
import type { AlarmWatch, Balancer } from '../balancers/balancer.js';
import { alarmsOf, checkGates, deploymentHealthTimeout, resumedAlarms, type GateName } from './deployment-gates.js';
import type { Fleet } from '../fleets/fleet-model.js';
import { fleetTraffic, type FleetTraffic } from './fleet-traffic.js';


export interface DeploymentsOptions {
  docs: DocStore;
  hub: AgentHub;
  fleets: FleetRegistry;
  store: ReleaseStore;
  /** the fleets' config versions: every deployment of a release carries the fleet's latest one */
  configs: Pick<FleetConfigs, 'current'>;
  /** signs the channel pointers a deployment moves; without it deployments are refused */
  signingKey?: PrivateKey;
  trustedKeys: PublicKey[];
  log: Logger;
  now: () => Date;
  pointerTtlMs: number;
  /** bake, relaunch, heal and group rollback: the fleet's provider and how to bake and boot */
  groups?: Pick<GroupRolloutContext, 'provider' | 'bake' | 'boot' | 'launchTimeoutMs'>;
  /** the fleet's load balancer, if it has one: every swap drains through it */
  balancerFor?: (fleet: Fleet) => Balancer | undefined;
  /** watches CloudWatch alarms (`--alarm`); without it deployments naming alarms are refused */
  alarmWatch?: (names: string[]) => Promise<AlarmWatch>;
  /** how long in-flight requests get to end when an instance is drained (default 30 s) */
  drainMs?: number;
}

/** A deployment to create: the gates may be left out (none), and `config` (false). */
export type DeploymentInput = Omit<DeploymentCreate, GateName | 'config'> & Partial<Pick<DeploymentCreate, GateName | 'config'>>;

export interface Deployments {
  /**
   * Deploys a release (the fleet's desired one when only `config` is asked for) with the fleet's
   * latest config version, or with `bound` when given (a rollback goes back to a config, a heal keeps it).
   */
  create(input: DeploymentInput, kind?: 'deploy' | 'rollback', bound?: BoundConfig | null): Promise<Deployment>;
  /** A deployment of the fleet's previous good release (or `version`, an older one), as a new pointer or its stopped group. */
  rollback(fleet: string, opts: Pick<DeploymentCreate, 'batch' | 'maxFailures' | 'healthTimeoutMs'> & { version?: string | undefined }): Promise<Deployment>;
  /** Replaces the fleet's drifted instances from an image holding its desired release (baked first if none exists). */
  heal(fleet: string, opts: Pick<DeploymentCreate, 'maxFailures' | 'healthTimeoutMs'>): Promise<Deployment>;
  get(id: string): Promise<Deployment>;
  list(fleet?: string): Promise<Deployment[]>;
  cancel(id: string): Promise<Deployment>;
  /** A paused canary goes on (KILN_NOT_PAUSED unless paused). */
  promote(id: string): Promise<Deployment>;
  /** A paused canary is rolled back (KILN_NOT_PAUSED unless paused). */
  abort(id: string): Promise<Deployment>;
  /** At start: rollouts a previous controller left running are resumed (commands are idempotent). */
  resume(): Promise<void>;
  /** the release a channel points to now, with its config when it is `fleet`'s; or null */
  pointed(app: string, channel: string, fleet: string): Promise<TargetRef | null>;
  /** resolves when no rollout runs */
  idle(): Promise<void>;
  /** Stops every rollout where it is and writes nothing more: the next controller resumes them. */
  close(): void;
  /** Runs `fn` while no deployment of the fleet can start (`kiln fleet delete`); KILN_FLEET_BUSY while one runs. */
  exclusive<T>(fleet: string, fn: () => Promise<T>): Promise<T>;
  /** Removes a fleet's deployment records; how many there were. */
  removeRecords(fleet: string): Promise<number>;
}

/** Running, or paused at its canary: a rollout still holds its fleet. */
export const inFlight = (d: Pick<Deployment, 'state'>) => d.state === 'running' || d.state === 'paused';

const keyOf = (fleet: string, id: string) => `controller/deployments/${fleet}/${id}.json`;

export function createDeployments(o: DeploymentsOptions): Deployments {
  const log = o.log.child({ module: 'deployments' });
  const running = new Map<string, { record: Deployment; done: Promise<void> }>();
  const busy = new Set<string>();
  const waiter = createRolloutWaiter(o.hub);
  // A stopping controller must not record what it did not see: the waits it abandons are no failures.
  let closed = false;

  /** The fleet's instances in its balancer, when it has one. */
  function trafficOf(fleet: Fleet, healthTimeoutMs: number): FleetTraffic | undefined {
    const balancer = o.balancerFor?.(fleet);
    if (!balancer) return undefined;
    return fleetTraffic({ balancer, fleet: fleet.name, ...(o.groups ? { provider: o.groups.provider } : {}), healthyMs: healthTimeoutMs, drainMs: o.drainMs ?? 30_000, log });
  }

  function start(record: Deployment, alarms: AlarmWatch | undefined): void {
    const succeeded = async (r: Deployment) => void (closed || (await o.fleets.setDesired(r.fleet, r.release)));
    const save = async (r: Deployment) => void (closed || (await o.docs.put(keyOf(r.fleet, r.id), r)));
    const stopped = () => closed;
    const gates = { traffic: trafficOf(o.fleets.get(record.fleet), record.healthTimeoutMs), alarms };
    const run =
      record.strategy === 'hotfix' && record.kind !== 'heal'
        ? runRollout({ record, known: () => fleetRows(o.fleets.get(record.fleet), o.hub), waiter, save, movePointer, signedManifest: (app, version) => o.store.getManifest(app, version), succeeded, log, now: o.now, stopped, hub: o.hub, ...gates })
        : // A group rollout stopped by the controller stopping still removes its group, so it puts the pointer back too:
          // the live group's agents follow the pointer while no controller is there.
          runGroupRollout({ ...o.groups!, record, fleets: o.fleets, hub: o.hub, waiter, save, movePointer: pointTo, log, now: o.now, stopped, ...gates });
    const done = run
      .then(() => undefined)
      .catch((err) => log.error({ err, id: record.id }, 'rollout crashed'))
      .finally(() => {
        running.delete(record.fleet);
        busy.delete(record.fleet);
      });
    running.set(record.fleet, { record, done });
  }

  /** Points the fleet's channel at `release` and its config, unless the controller is stopping. */
  const movePointer = async (app: string, channel: string, release: TargetRef) => void (closed || (await pointTo(app, channel, release)));

  /**
   * Points the fleet's channel at `release`, with its config bound in the same signed pointer, unless
   * it already does (a resumed rollout). A pointer that cannot be read (a bad signature, the bucket
   * away) fails the move with its code.
   */
  async function pointTo(app: string, channel: string, release: TargetRef): Promise<void> {
    const current = await findPointer(o.store, app, channel, o.trustedKeys);
    if (current && sameTarget({ manifestSha256: current.manifestSha256, config: current.config ?? null }, release)) return;
    await promoteRelease({ store: o.store, app, version: release.version, channel, config: release.config ?? undefined, key: o.signingKey!, keys: o.trustedKeys, ttlMs: o.pointerTtlMs, now: o.now });
  }

  /** Only a channel without a pointer is null: one that cannot be read is thrown (a deployment would lose what to go back to). */
  async function pointed(app: string, channel: string, fleet: string): Promise<TargetRef | null> {
    const p = await findPointer(o.store, app, channel, o.trustedKeys);
    if (!p) return null;
    // The pointer's seq counts the channel's promotes; a ReleaseRef carries the release's own seq (the
    // app's), which a deployment compares to tell forward from back.
    const { manifest } = await showRelease(o.store, app, p.version, o.trustedKeys);
    return { version: p.version, seq: manifest.seq, manifestSha256: p.manifestSha256, config: p.config?.fleet === fleet ? p.config : null, format: manifest.schema };
  }

  /** The fleet's latest config version as a deployment binds it; null when it has none (KILN_CONFIG_NOT_FOUND when `required`). */
  async function latestConfig(fleet: Fleet, required: boolean): Promise<BoundConfig | null> {
    const latest = await o.configs.current(fleet);
    if (!latest && required) throw new KilnError('KILN_CONFIG_NOT_FOUND', `fleet ${fleet.name} has no config yet: \`kiln config set ${fleet.name} KEY=VALUE\` publishes its first version`);
    return latest ? { fleet: fleet.name, seq: latest.seq, sha256: latest.sha256 } : null;
  }

  let resuming: Promise<void> = Promise.resolve();

  async function create(input: DeploymentInput, kind: Deployment['kind'] = 'deploy', bound?: BoundConfig | null): Promise<Deployment> {
    // What a previous controller left running is resumed or cleaned up before anything new starts.
    // Settled is enough: the start-up that called resume() awaits it and reports its failure.
    await Promise.allSettled([resuming]);
    const fleet = o.fleets.get(input.fleet);
    const onGroups = input.strategy !== 'hotfix' || kind === 'heal' || (kind === 'rollback' && fleet.groups.some((g) => g.state === 'standby'));
    if (onGroups && (!o.groups || fleet.provider === 'none')) {
      throw new KilnError('KILN_REQUEST_INVALID', `fleet ${fleet.name} has no provider this controller runs (provider: ${fleet.provider}); only --strategy hotfix reaches its instances`);
    }
    // A rollout whose verdict is out (the API shows it finished) only writes its record still.
    const ending = running.get(fleet.name);
    if (ending && !inFlight(ending.record)) await ending.done;
    if (busy.has(fleet.name)) {
      const id = running.get(fleet.name)?.record.id;
      throw new KilnError(
        'KILN_FLEET_BUSY',
        running.get(fleet.name)?.record.state === 'paused'
          ? `fleet ${fleet.name} has a deployment paused at its canary (${id}): go on with \`kiln deployments promote ${id}\`, or roll it back with \`kiln deployments abort ${id}\``
          : id
          ? `fleet ${fleet.name} already has a deployment running (${id}): wait for it (\`kiln deployments show ${id} --follow\`) or stop it (\`kiln deployments cancel ${id}\`)`
          : `fleet ${fleet.name} has a deployment starting: try again in a moment (\`kiln deployments ${fleet.name}\` lists them)`,
      );
    }
    const gates = { canary: input.canary ?? null, canaryWaitMs: input.canaryWaitMs ?? null, soakMs: input.soakMs ?? 0, maxErrorRate: input.maxErrorRate ?? null, alarms: input.alarms ?? [] };
    checkGates(fleet, gates, o.balancerFor?.(fleet), onGroups ? { n: fleet.size, what: 'of' } : { n: fleetRows(fleet, o.hub).filter((i) => i.connected).length, what: 'connected in' });
    busy.add(fleet.name);
    try {
      const alarms = await alarmsOf(gates.alarms, o.alarmWatch);
      if (!o.signingKey) throw new KilnError('KILN_KEY_INVALID', 'the controller has no release signing key to move channel pointers with; start it with one (`kiln keys generate`)');
      // A config deployment runs the fleet's latest config with the release it should run.
      const version = input.version ?? fleet.desired?.version;
      if (!version) throw new KilnError('KILN_NO_PREVIOUS', `fleet ${fleet.name} has no desired release to run its config with: deploy a release first (\`kiln deploy ${fleet.name} VERSION\` takes its latest config along)`);
      const config = bound !== undefined ? bound : await latestConfig(fleet, input.config ?? false);
      const { manifest, manifestSha256, summary } = await showRelease(o.store, fleet.app, version, o.trustedKeys);
      if (!summary.verified) throw new KilnError('KILN_SIGNATURE_INVALID', `${fleet.app} ${version} is not signed by a key this controller trusts; agents would refuse it`);
      // Its format with it: the rollout sends a format 2 release only to agents that read it.
      const release: TargetRef = { version: manifest.version, seq: manifest.seq, manifestSha256, config, format: manifest.schema };
      const healthTimeoutMs = deploymentHealthTimeout(manifest, input.healthTimeoutMs);
      const previous = fleet.desired ?? (await pointed(fleet.app, fleet.channel, fleet.name));
      const unchanged = previous !== null && sameTarget(previous, release);
      const at = o.now().toISOString();
      const record: Deployment = {
        id: `d-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
        fleet: fleet.name,
        app: fleet.app,
        channel: fleet.channel,
        strategy: input.strategy,
        kind,
        release,
        previous: unchanged ? null : previous,
        unchanged,
        batch: input.batch,
        maxFailures: input.maxFailures,
        healthTimeoutMs,
        state: 'running',
        verdict: null,
        error: null,
        batches: [],
        instances: {},
        cancelRequested: false,
        group: null,
        image: null,
        phases: [],
        ...gates,
        balancer: o.balancerFor?.(fleet)?.endpoint ?? null,
        pausedAt: null,
        promoteRequested: false,
        abortRequested: false,
        soaks: [],
        createdAt: at,
        updatedAt: at,
        finishedAt: null,
      };
      await o.docs.put(keyOf(fleet.name, record.id), record);
      log.info({ id: record.id, fleet: fleet.name, version: release.version, config: release.config?.seq ?? null, kind, unchanged }, 'deployment created');
      start(record, alarms);
      return record;
    } catch (err) {
      if (!running.has(fleet.name)) busy.delete(fleet.name);
      throw err;
    }
  }

  /**
   * A bake, relaunch or heal a previous controller left running is not resumed half-way: what it
   * launched and did not make live is reaped by its tags, and the record says interrupted.
   */
  async function interrupted(rec: Deployment): Promise<void> {
    const p = o.groups?.provider;
    const fleet = o.fleets.get(rec.fleet);
    const live = fleet.groups.find((g) => g.name === rec.group)?.state === 'live';
    if (p) {
      await reapBakes({ provider: p, store: o.store, tags: { [TAG.deployment]: rec.id } });
      if (rec.group && !live && rec.kind !== 'rollback') {
        const ids = (await p.describeInstances({ [TAG.fleet]: rec.fleet, [TAG.group]: rec.group })).map((i) => i.id);
        // A canary group served: out of the balancer before it goes.
        await trafficOf(fleet, rec.healthTimeoutMs)?.drain(ids).catch((err: unknown) => log.warn({ err, ids }, 'cannot drain the interrupted group out of the balancer'));
        await p.terminate(ids);
        await o.fleets.update(rec.fleet, (f) => ({ ...f, groups: f.groups.filter((g) => g.name !== rec.group) }));
      }
    }
    // The pointer goes back only if it still points where this deployment moved it.
    const pointing = !live && rec.previous && rec.kind !== 'rollback' ? await pointed(rec.app, rec.channel, rec.fleet) : null;
    if (pointing && rec.previous && sameTarget(pointing, rec.release)) await pointTo(rec.app, rec.channel, rec.previous);
    const at = o.now().toISOString();
    Object.assign(rec, {
      state: live ? 'succeeded' : 'failed',
      verdict: live ? `the controller restarted after group ${rec.group} went live` : 'interrupted: the controller restarted mid-way; what it launched was removed and the live group stays live',
      error: live ? null : { code: 'KILN_INTERRUPTED', message: 'the controller restarted during this deployment' },
      finishedAt: at,
      updatedAt: at,
    });
    await o.docs.put(keyOf(rec.fleet, rec.id), rec);
    log.warn({ id: rec.id, fleet: rec.fleet, state: rec.state }, 'a bake, relaunch or heal was interrupted by a controller restart');
  }

  /** A paused canary is promoted or aborted by flagging its record; the rollout acts on it within a poll. */
  async function decide(id: string, what: 'promote' | 'abort'): Promise<Deployment> {
    const rec = await read(id);
    if (rec.state === 'paused' && ![...running.values()].some((r) => r.record === rec)) {
      throw new KilnError('KILN_NOT_PAUSED', `deployment ${id} is recorded paused, but no rollout of this controller holds it (it was not resumed at start: the controller's log says why); restart the controller to resume it`);
    }
    if (rec.state !== 'paused') {
      throw new KilnError('KILN_NOT_PAUSED', `deployment ${id} is ${rec.state}, not paused at its canary: only a deployment made with --canary pauses${rec.state === 'running' && rec.canary !== null ? ' (its canary is still on its way: try again when `kiln deployments show ' + id + '` says paused)' : ''}`);
    }
    if (what === 'promote') rec.promoteRequested = true;
    else rec.abortRequested = true;
    log.info({ id }, `${what} requested`);
    return rec;
  }

  async function read(id: string): Promise<Deployment> {
    for (const r of running.values()) if (r.record.id === id) return r.record;
    const absent = (shown: string) => new KilnError('KILN_DEPLOYMENT_NOT_FOUND', `no deployment ${shown}: \`kiln deployments FLEET\` lists a fleet's deployments (\`kiln deployments\` all of them)`);
    if (!/^d-[a-z0-9]+-[0-9a-f]{6}$/.test(id)) throw absent(JSON.stringify(id));
    for (const f of o.fleets.list()) {
      const rec = await o.docs.get(keyOf(f.name, id), Deployment);
      if (rec) return rec;
    }
    throw absent(id);
  }

  async function list(fleet?: string): Promise<Deployment[]> {
    const names = fleet ? [o.fleets.get(fleet).name] : o.fleets.list().map((f) => f.name);
    const out: Deployment[] = [];
    for (const name of names) {
      for (const key of await o.docs.list(`controller/deployments/${name}/`)) {
        const live = [...running.values()].find((r) => key.endsWith(`/${r.record.id}.json`));
        const rec =
          live?.record ??
          (await o.docs.get(key, Deployment).catch((err) => {
            log.error({ err, key }, 'skipping a deployment record that cannot be read');
            return undefined;
          }));
        if (rec) out.push(rec);
      }
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  return {
    create,
    async rollback(fleetName, { version, ...opts }) {
      const fleet = o.fleets.get(fleetName);
      // A stopped group is brought back as it was: seconds, nothing installed.
      const standby = fleet.groups.filter((g) => g.state === 'standby').at(-1);
      if (version !== undefined) {
        // An older release named by the operator: its stopped group when there is one, else a new pointer to it.
        const { manifest } = await showRelease(o.store, fleet.app, version, o.trustedKeys);
        if (fleet.desired && manifest.seq >= fleet.desired.seq) {
          throw new KilnError('KILN_REQUEST_INVALID', `${fleet.app} ${version} is not older than ${fleet.desired.version}, which fleet ${fleet.name} runs: a rollback goes back (\`kiln release list ${fleet.app}\`); \`kiln deploy ${fleet.name} ${version}\` goes forward`);
        }
        // Its stopped group comes back as it ran; a hotfix to it keeps the config the fleet runs.
        if (standby?.release?.version === version) return create({ fleet: fleet.name, version, strategy: 'relaunch', ...opts }, 'rollback', standby.release.config);
        return create({ fleet: fleet.name, version, strategy: 'hotfix', ...opts }, 'rollback', fleet.desired?.config ?? null);
      }
      if (standby?.release) return create({ fleet: fleet.name, version: standby.release.version, strategy: 'relaunch', ...opts }, 'rollback', standby.release.config);
      // What the fleet ran before: that release with that config.
      const target = fleet.history.at(-1);
      if (!target) throw new KilnError('KILN_NO_PREVIOUS', `fleet ${fleet.name} has no earlier release to roll back to`);
      return create({ fleet: fleet.name, version: target.version, strategy: 'hotfix', ...opts }, 'rollback', target.config);
    },
    async heal(fleetName, opts) {
      const fleet = o.fleets.get(fleetName);
      if (!fleet.desired) throw new KilnError('KILN_NO_PREVIOUS', `fleet ${fleet.name} has no desired release yet: deploy one first`);
      // Back to what the fleet should run: its desired release with its desired config (a newer config waits for `deploy --config`).
      return create({ fleet: fleet.name, version: fleet.desired.version, strategy: 'bake', batch: { percent: 100 }, ...opts }, 'heal', fleet.desired.config);
    },
    get: read,
    list,
    async cancel(id) {
      const rec = await read(id);
      if (!inFlight(rec)) return rec;
      rec.cancelRequested = true;
      log.info({ id }, 'cancel requested: stopping after the running batch');
      return rec;
    },
    promote: (id) => decide(id, 'promote'),
    abort: (id) => decide(id, 'abort'),
    resume() {
      resuming = (async () => {
        for (const f of o.fleets.list()) {
          for (const rec of await list(f.name)) {
            if (!inFlight(rec) || busy.has(f.name)) continue;
            if (rec.strategy !== 'hotfix' || rec.kind === 'heal') {
              await interrupted(rec);
              continue;
            }
            log.warn({ id: rec.id, fleet: f.name }, 'resuming a rollout a previous controller left running');
            busy.add(f.name);
            start(rec, await resumedAlarms(rec.alarms, o.alarmWatch));
          }
        }
      })();
      return resuming;
    },
    pointed,
    async idle() {
      await Promise.all([...running.values()].map((r) => r.done));
    },
    close() {
      closed = true;
      waiter.close();
    },
    async exclusive(fleet, fn) {
      await Promise.allSettled([resuming]);
      const ending = running.get(fleet);
      if (ending && !inFlight(ending.record)) await ending.done;
      if (busy.has(fleet)) {
        const id = running.get(fleet)?.record.id;
        throw new KilnError('KILN_FLEET_BUSY', `fleet ${fleet} has a deployment running${id ? ` (${id}): wait for it, or stop it with \`kiln deployments cancel ${id}\`` : ': wait for it'}, then try again`);
      }
      busy.add(fleet);
      try {
        return await fn();
      } finally {
        busy.delete(fleet);
      }
    },
    async removeRecords(fleet) {
      const keys = await o.docs.list(`controller/deployments/${fleet}/`);
      for (const key of keys) await o.docs.remove(key);
      return keys.length;
    },
  };
}
