import { CommandAction, KilnError, MAX_INLINE_MANIFEST, asKilnError, fetchedOf, type CommandResult, type Logger, type SignedObject } from '@kiln/shared';
import { describeTarget, type BatchSpec, type Deployment, type TargetRef } from '../fleets/fleet-model.js';
import { healthyOn, type RolloutWaiter } from '../fleets/rollout-wait.js';
import type { AgentHub } from '../fleets/agent-hub.js';
import { pauseAfterCanary } from './canary-pause.js';
import type { FleetTraffic } from './fleet-traffic.js';
import { soak } from './soak.js';
import type { AlarmWatch } from '../balancers/balancer.js';

export interface RolloutContext {
  record: Deployment;
  /** the fleet's instances as `kiln status` shows them (connected or not): what the rollout should reach */
  known: () => Array<{ instanceId: string; connected: boolean }>;
  waiter: RolloutWaiter;
  save: (record: Deployment) => Promise<void>;
  movePointer: (app: string, channel: string, release: TargetRef) => Promise<void>;
  /** the release's signed manifest, sent with each install command so the agents need not fetch it */
  signedManifest?: (app: string, version: string) => Promise<SignedObject>;
  /** records the release as the fleet's desired one, before the record says succeeded */
  succeeded: (record: Deployment) => Promise<void>;
  log: Logger;
  now: () => Date;
  /** true once the controller is stopping: the rollout ends where it is, its record left running for the next one */
  stopped?: () => boolean;
  /** the fleet's balancer: each batch is drained before its install and back in service, healthy, before the next */
  traffic?: FleetTraffic | undefined;
  /** CloudWatch alarms watched during each soak */
  alarms?: AlarmWatch | undefined;
  /** what the soak reads the instances' health from */
  hub: Pick<AgentHub, 'get'>;
}

type Mark = (id: string, step: Deployment['instances'][string]['step'], error?: { code: string; message: string }) => void;
type Cause = { code: string; message: string };

/** Splits the targets into batches of a share or a count of the fleet; a canary of N is a first batch of its own. */
export function planBatches(ids: string[], spec: BatchSpec, canary: number | null = null): string[][] {
  const size = batchSize(ids.length, spec);
  const out: string[][] = canary ? [ids.slice(0, canary)] : [];
  for (let i = canary ?? 0; i < ids.length; i += size) out.push(ids.slice(i, i + size));
  return out;
}

const batchSize = (n: number, spec: BatchSpec) => ('count' in spec ? spec.count : Math.max(1, Math.ceil((n * spec.percent) / 100)));

/**
 * The config a command binds to its release (`from` is what the instance runs before): the agent reads
 * and verifies that version and runs the release with it; null (none) when going back from a config
 * to before one; left out when neither has one (agents older than configs refuse the field).
 */
const configFor = (t: TargetRef, from: TargetRef | null) => (t.config || from?.config ? { config: t.config } : {});
/** Back to a release and its config: the agents accept a lower seq for a rollback. */
const rollbackTo = (t: TargetRef, from: TargetRef | null): CommandAction => ({ kind: 'rollback', version: t.version, manifestSha256: t.manifestSha256, ...configFor(t, from) });

/**
 * A hotfix rollout: move the channel pointer (instances launched later boot into the release),
 * then batch by batch send the command and wait for each instance to report the release installed
 * and healthy. Past `maxFailures`, every touched instance is rolled back and the pointer restored.
 * Re-entrant: a resumed record skips what is done and re-sends what was in flight (same ids).
 */
export async function runRollout(c: RolloutContext): Promise<Deployment> {
  const r = c.record;
  const log = c.log.child({ deployment: r.id, fleet: r.fleet });
  let saving: Promise<void> | undefined;
  let dirty = false;
  // Records are written in order and coalesced: a thousand instance updates are a few PUTs.
  const save = (): Promise<void> => {
    r.updatedAt = c.now().toISOString();
    if (saving) {
      dirty = true;
      return saving;
    }
    saving = (async () => {
      do {
        dirty = false;
        await c.save(structuredClone(r)).catch((err) => log.error({ err }, 'cannot write the deployment record'));
      } while (dirty);
    })().finally(() => (saving = undefined));
    return saving;
  };
  /** The install command, with the signed manifest when it can be read within 5 s and fits; the agents fetch it otherwise. */
  const installAction = async (): Promise<CommandAction> => {
    const { version, seq, manifestSha256 } = r.release;
    const plain: CommandAction = { kind: 'install', version, seq, manifestSha256, ...configFor(r.release, r.previous) };
    const timeout = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 5_000).unref());
    const signed = await Promise.race([c.signedManifest?.(r.app, r.release.version), timeout]).catch((err) => void log.warn({ err }, 'cannot read the manifest to send along: the agents fetch it'));
    if (!signed || signed.bytes.length > MAX_INLINE_MANIFEST) return plain;
    const withManifest = CommandAction.safeParse({ ...plain, manifest: { bytes: signed.bytes.toString('base64'), sig: signed.sig.toString('base64') } });
    return withManifest.success ? withManifest.data : plain;
  };
  const mark: Mark = (id, step, error) => {
    const was = r.instances[id];
    // What its install fetched stays with the instance through its later steps (healthy, rolled back).
    r.instances[id] = { step, batch: was?.batch ?? -1, ...(error ? { error } : {}), ...fetchedOf(was), at: c.now().toISOString() };
    void save();
  };
  /** What the agent's install of the release fetched, from its result (agents from 0.4.0 on; none for a no-op). */
  const fetched = (id: string, result: CommandResult | undefined) => {
    const inst = r.instances[id];
    if (inst && result) Object.assign(inst, fetchedOf(result));
  };

  let install: CommandAction | undefined;
  const stopping = () => {
    log.info('the controller is stopping: the rollout is left running for the next controller to resume');
    return r;
  };

  /**
   * One batch: out of the balancer, installed, back in and healthy, soaked. What failed it, or
   * undefined; 'stopped' when the controller stops (the next one redoes what was not finished).
   */
  async function runBatch(n: number, batch: string[]): Promise<Cause | 'stopped' | undefined> {
    const where = `batch ${n + 1} of ${r.batches.length}`;
    const todo = batch.filter((id) => r.instances[id]?.step === 'pending' || r.instances[id]?.step === 'sent');
    try {
      // Out of the balancer first: no request reaches an app while it restarts.
      await c.traffic?.drain(todo);
    } catch (err) {
      const e = asKilnError(err);
      return { code: e.code, message: `${where}: could not take ${todo.join(', ')} out of the balancer: ${e.message}` };
    }
    const outcomes = await Promise.all(
      todo.map(async (id) => {
        mark(id, 'sent');
        return c.waiter.run({ instanceId: id, commandId: `${r.id}.${id}`, app: r.app, action: install!, want: r.release, timeoutMs: r.healthTimeoutMs });
      }),
    );
    if (c.stopped?.()) return 'stopped';
    todo.forEach((id, i) => {
      const o = outcomes[i]!;
      if (!o.ok) mark(id, 'failed', { code: o.code, message: o.message });
      else fetched(id, o.result);
    });
    // Back in and healthy in the balancer before the batch counts: the next one may take others out.
    (await admit(c, todo.filter((_, i) => outcomes[i]!.ok), mark)).forEach((id) => mark(id, 'healthy'));
    await readmitSwappedBack(c, r, todo.filter((_, i) => !outcomes[i]!.ok));
    const failed = Object.values(r.instances).filter((i) => i.step === 'failed').length;
    log.info({ batch: n + 1, of: r.batches.length, failed }, 'batch done');
    if (failed > r.maxFailures) return { code: 'KILN_DEPLOY_FAILED', message: `${failed} instance(s) failed in ${where}, over the limit of ${r.maxFailures}` };
    const healthy = batch.filter((id) => r.instances[id]?.step === 'healthy');
    // A batch soaks once: a soak a stopping controller cut short is done again by the next one.
    if (r.soakMs <= 0 || healthy.length === 0 || r.soaks.some((x) => x.batch === n && x.passed)) return undefined;
    const untouched = r.batches.slice(n + 1).flat().filter((id) => r.instances[id]?.step === 'pending');
    let soaked;
    try {
      soaked = await soak({ batch: n, ids: healthy, others: untouched, manifestSha256: r.release.manifestSha256, soakMs: r.soakMs, maxErrorRate: r.maxErrorRate, traffic: c.traffic, alarms: c.alarms, hub: c.hub, stopped: c.stopped });
    } catch (err) {
      const e = asKilnError(err);
      return { code: e.code, message: `${where}: its soak could not be judged: ${e.message}` };
    }
    if (!soaked) return 'stopped';
    r.soaks.push(soaked.result);
    if (!soaked.error) return undefined;
    healthy.forEach((id) => mark(id, 'failed', { code: soaked.error!.code, message: soaked.error!.message }));
    return { code: soaked.error.code, message: `${where} failed its soak: ${soaked.error.message}` };
  }

  // The verdict is kept aside until it is written: a reader never sees an outcome the bucket does not hold.
  const end: Partial<Pick<Deployment, 'state' | 'verdict' | 'error' | 'finishedAt'>> = {};
  try {
    const planned = r.batches.length > 0; // a resumed record keeps its plan
    const all = planned ? [] : c.known();
    if (!planned) {
      // Not connected now: not commanded; they converge on the moved pointer when they come back.
      for (const i of all.filter((i) => !i.connected)) r.instances[i.instanceId] = { step: 'unreachable', batch: -1, at: c.now().toISOString() };
      // Reaching none of the fleet's instances is no deployment: fail before the pointer moves, or
      // the verdict would say "succeeded: 0 healthy" while the fleet runs what it ran.
      if (all.length > 0 && !all.some((i) => i.connected)) {
        const ids = all.map((i) => i.instanceId).sort();
        throw new KilnError(
          'KILN_AGENT_UNREACHABLE',
          `reached 0 of ${ids.length} instances of fleet ${r.fleet}: no agent is connected to this controller (${ids.slice(0, 10).join(', ')}${ids.length > 10 ? ` and ${ids.length - 10} more` : ''}); nothing was installed and the channel pointer did not move. \`kiln status ${r.fleet}\` shows them; agents keep calling the controller address they were started with`,
        );
      }
    }
    await c.movePointer(r.app, r.channel, r.release);
    if (!planned) {
      const targets = all.filter((i) => i.connected).map((i) => i.instanceId).sort();
      r.batches = planBatches(targets, r.batch, r.canary);
      r.batches.forEach((b, n) => b.forEach((id) => (r.instances[id] = { step: 'pending', batch: n, at: c.now().toISOString() })));
      await save();
      log.info({ targets: targets.length, unreachable: all.length - targets.length, batches: r.batches.length }, 'rollout started');
    }
    // Going back (a fleet rollback, or an explicit older version) is a rollback on the agents: they refuse a lower seq otherwise.
    const back = r.kind === 'rollback' || (r.previous !== null && r.release.seq < r.previous.seq);
    install = back ? rollbackTo(r.release, r.previous) : await installAction();
    // A cause recorded by a controller that stopped while rolling back: the rollback is finished, not the rollout.
    let cause: Cause | undefined = r.error ?? undefined;
    for (const [n, batch] of r.batches.entries()) {
      if (cause) break;
      if (c.stopped?.()) return stopping();
      if (r.cancelRequested) {
        // Instances launched from now on boot into what the fleet ran before; those already done stay.
        if (r.previous) await c.movePointer(r.app, r.channel, r.previous);
        const done = Object.values(r.instances).filter((i) => i.step === 'healthy').length;
        end.state = 'cancelled';
        end.verdict = `cancelled before batch ${n + 1} of ${r.batches.length}: ${done} instance(s) stay on ${describeTarget(r.release)}${r.previous ? `, the channel points to ${describeTarget(r.previous)} again` : ''}`;
        break;
      }
      const outcome = await runBatch(n, batch);
      if (outcome === 'stopped') return stopping();
      cause = outcome;
      if (!cause && n === 0 && r.canary !== null && r.batches.length > 1) {
        const canary = batch.filter((id) => r.instances[id]?.step === 'healthy');
        const decision = await pauseAfterCanary({ record: r, save, from: c, canary, mayPromoteItself: canary.length === batch.length });
        if (decision === 'stopped') return stopping();
        if (decision === 'abort') cause = { code: 'KILN_DEPLOY_ABORTED', message: `the canary (${batch.join(', ')}) was aborted by an operator` };
        else if (typeof decision === 'object') cause = { code: decision.unhealthy.code, message: `the canary stopped serving while paused: ${decision.unhealthy.message}` };
        log.info({ decision }, 'canary decided');
      }
    }
    if (cause) {
      // Recorded before the rollback: a controller that stops midway leaves a record the next one rolls back, never forward.
      r.error = cause;
      await save();
      await rollBack(c, r, mark);
      end.state = 'failed';
      end.error = cause;
      end.verdict = `failed: ${cause.message}; ${r.previous ? `touched instances rolled back to ${describeTarget(r.previous)}` : 'no earlier release to roll back to'}`;
    }
    if (!end.state) {
      const healthy = Object.values(r.instances).filter((i) => i.step === 'healthy').length;
      const failed = Object.values(r.instances).filter((i) => i.step === 'failed').length;
      await c.succeeded(r);
      end.state = 'succeeded';
      end.verdict = `succeeded: ${healthy} healthy on ${describeTarget(r.release)}${failed ? `, ${failed} failed (within the limit of ${r.maxFailures})` : ''}${r.unchanged ? ' (already the fleet\'s desired release and config)' : ''}`;
    }
  } catch (err) {
    const e = asKilnError(err);
    end.state = 'failed';
    end.error = { code: e.code, message: e.message };
    end.verdict = `failed: ${e.message}`;
    log.error({ err: e }, 'rollout failed');
  }
  end.finishedAt = c.now().toISOString();
  await saving;
  r.updatedAt = end.finishedAt;
  await c.save({ ...structuredClone(r), ...end }).catch((err) => log.error({ err }, 'cannot write the deployment record'));
  Object.assign(r, end);
  log.info({ state: r.state, verdict: r.verdict }, 'rollout finished');
  return r;
}

/**
 * Puts instances back in the balancer; those it does not see healthy in time are marked failed
 * (and stay out). Returns the ones in service. Without a balancer, every one.
 */
async function admit(c: RolloutContext, ids: string[], mark: Mark): Promise<string[]> {
  if (!c.traffic || ids.length === 0) return ids;
  try {
    await c.traffic.admit(ids);
    return ids;
  } catch (err) {
    // One target that never got healthy fails its own admission; the others go in alone.
    const results = await Promise.all(ids.map((id) => c.traffic!.admit([id]).then(() => null, (e: unknown) => asKilnError(e))));
    ids.forEach((id, i) => results[i] && mark(id, 'failed', { code: results[i]!.code, message: results[i]!.message }));
    c.log.warn({ err }, 'instances did not become healthy in the balancer');
    return ids.filter((_, i) => !results[i]);
  }
}

/**
 * Instances whose install failed were swapped back by their agents: serving what they ran before,
 * they go back in the balancer (best effort: one that does not get healthy stays out).
 */
async function readmitSwappedBack(c: RolloutContext, r: Deployment, ids: string[]): Promise<void> {
  const prev = r.previous;
  if (!c.traffic || !prev) return;
  const back = ids.filter((id) => healthyOn(c.hub.get(id)?.report ?? null, prev));
  await c.traffic.admit(back).catch((err: unknown) => c.log.warn({ err, instances: back }, 'instances swapped back after a failed install stay out of the balancer'));
}

/**
 * Every instance this rollout touched goes back to the previous release; the pointer too. With a
 * balancer, as many at a time as a batch: drained, rolled back, healthy in it again. The failed
 * ones go first: they are out already, or serve the previous release.
 */
async function rollBack(c: RolloutContext, r: Deployment, mark: Mark): Promise<void> {
  const prev = r.previous;
  if (!prev) return;
  await c.movePointer(r.app, r.channel, prev);
  const touched = (step: string) => Object.entries(r.instances).filter(([, i]) => i.step === step).map(([id]) => id);
  const order = [...touched('failed'), ...touched('sent'), ...touched('healthy')];
  const size = c.traffic ? batchSize(r.batches.flat().length, r.batch) : order.length;
  for (let i = 0; i < order.length; i += size) {
    const chunk = order.slice(i, i + size);
    await c.traffic?.drain(chunk).catch((err: unknown) => c.log.warn({ err, instances: chunk }, 'cannot take instances out of the balancer for their rollback: rolling them back anyway'));
    const back = await Promise.all(
      chunk.map(async (id) => {
        const o = await c.waiter.run({ instanceId: id, commandId: `${r.id}.rb.${id}`, app: r.app, action: rollbackTo(prev, r.release), want: prev, timeoutMs: r.healthTimeoutMs });
        if (o.ok) mark(id, 'rolled-back', r.instances[id]?.error);
        else mark(id, 'rollback-failed', { code: o.code, message: o.message });
        return o.ok ? id : null;
      }),
    );
    await admit(c, back.filter((id): id is string => id !== null), (id, _step, error) => mark(id, 'rollback-failed', error));
  }
}
