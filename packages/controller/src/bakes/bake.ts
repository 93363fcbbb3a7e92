import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError, asKilnError, phaseStopwatch, promoteRelease, sha256Hex, showRelease, type Logger, type PrivateKey, type PublicKey, type ReleaseRef, type ReleaseStore, TRANSIENT_S3_CODES, contentSha256 } from '@kiln/shared';
import { TAG, type BootData, type ImageInfo, type Provider, type Tags } from '../providers/provider.js';
import type { RolloutWaiter, WaitOutcome } from '../fleets/rollout-wait.js';

export interface BakeTimeouts {
  /** the builder instance running */
  launchMs: number;
  /** the builder's agent installing the release and sealing the root */
  installMs: number;
  /** stopping the builder, creating the image, copying it */
  imageMs: number;
}

export const DEFAULT_BAKE_TIMEOUTS: BakeTimeouts = { launchMs: 120_000, installMs: 600_000, imageMs: 1_800_000 };

export interface BakeOptions {
  provider: Provider;
  store: ReleaseStore;
  waiter: RolloutWaiter;
  signingKey: PrivateKey;
  trustedKeys: PublicKey[];
  app: string;
  version: string;
  baseImage: string;
  regions: string[];
  /** the agent config a builder boots with (its channel, credential and `seal` are filled in here) */
  builderBoot: (channel: string) => Promise<BootData>;
  /** extra tags on the builder and the image (the deployment a bake belongs to, so a restarted controller can reap it) */
  tags?: Tags;
  /** part of the bake key: a new agent is a new image */
  agentVersion: string;
  timeouts?: Partial<BakeTimeouts>;
  log: Logger;
  /** told as each phase ends, with its wall time */
  onPhase?: (name: string, ms: number) => void;
}

export interface BakeResult {
  image: ImageInfo;
  copies: ImageInfo[];
  release: ReleaseRef;
  /** an image with the same bake key existed: nothing was built */
  skipped: boolean;
  bakeId: string | null;
  phases: Array<{ name: string; ms: number }>;
}

/** The channel a bake points its builder at: private to the bake, removed when it ends. */
const bakeChannel = (bakeId: string) => `bake-${bakeId.slice(2)}`;

/** How often the provider is asked whether a builder still runs while its agent installs. */
const BUILDER_CHECK_MS = 2_000;

/**
 * Resolves as not ok once the provider has said twice in a row that the builder is not running (it
 * crashed, was powered off or terminated; twice, as EC2's answers can lag). Asked every
 * BUILDER_CHECK_MS until `signal` aborts; never resolves after that.
 */
async function builderStops(provider: Provider, builder: string, tags: Tags, signal: AbortSignal): Promise<WaitOutcome> {
  let strikes = 0;
  while (!signal.aborted) {
    await sleep(BUILDER_CHECK_MS, undefined, { signal, ref: false }).catch((err: unknown) => {
      if ((err as Error).name !== 'AbortError') throw err; // aborted: the loop ends
    });
    const seen = await provider.describeInstances(tags).then((list) => ({ inst: list.find((i) => i.id === builder) }), () => undefined);
    if (signal.aborted || !seen) continue; // a failed describe says nothing
    const { inst } = seen;
    strikes = inst?.state === 'running' || inst?.state === 'pending' ? 0 : strikes + 1;
    if (strikes === 2) {
      return { ok: false, code: 'KILN_PROVIDER_FAILED', message: `the builder ${builder} ${inst ? `is ${inst.state}` : 'is gone'}: it stopped running during the install (crashed, powered off or terminated)` };
    }
  }
  return new Promise<WaitOutcome>(() => undefined);
}

/** The base image a bake starts from; KILN_IMAGE_NOT_FOUND when it is missing or not available. */
export async function baseImageOf(provider: Provider, id: string): Promise<ImageInfo> {
  const [base] = await provider.describeImages({ ids: [id] });
  if (!base || base.state !== 'available') throw new KilnError('KILN_IMAGE_NOT_FOUND', `the base image ${id} does not exist (or is not available); \`kiln images\` lists them`);
  return base;
}

/**
 * What bakes a stopped controller left behind, found by `tags` (the bake's or deployment's): builders
 * terminated, their private channels removed, images not yet available deleted.
 */
export async function reapBakes(o: { provider: Provider; store: ReleaseStore; tags: Tags }): Promise<void> {
  const builders = await o.provider.describeInstances(o.tags);
  await o.provider.terminate(builders.map((i) => i.id));
  for (const { tags } of builders) {
    const [bakeId, app] = [tags[TAG.bakeId], tags[TAG.app]];
    if (bakeId && app) await o.store.removePointer(app, bakeChannel(bakeId));
  }
  for (const img of await o.provider.describeImages({ tags: o.tags })) if (img.state !== 'available') await o.provider.deleteImage(img.id);
}

/**
 * Bakes an image holding `app@version`: builder from the base image → its agent installs the
 * release at boot through the shared routine and seals the root → stop → create image → copy →
 * tag with lineage. The builder, the bake's private channel and, on failure, every image tagged
 * with the bake id are reaped. A bake key (base image, manifest sha256, agent version) finds an
 * image baked before: then nothing is built.
 */
export async function bakeImage(o: BakeOptions): Promise<BakeResult> {
  const t = { ...DEFAULT_BAKE_TIMEOUTS, ...o.timeouts };
  const { manifest, manifestSha256 } = await showRelease(o.store, o.app, o.version, o.trustedKeys);
  const release = { version: manifest.version, seq: manifest.seq, manifestSha256 };
  // The manifest's digest, not the artifact's: two versions of one tree differ in version, seq, command,
  // env or health check, and the image marker names the release by this digest (a shared image would
  // boot the other release, then download this one at boot).
  const bakeKey = sha256Hex(Buffer.from(`${o.baseImage}\n${manifestSha256}\n${o.agentVersion}`)).slice(0, 32);
  const base = await baseImageOf(o.provider, o.baseImage);
  const earlier = (await o.provider.describeImages({ tags: { [TAG.bakeKey]: bakeKey } })).find((i) => i.state === 'available');
  if (earlier) {
    o.log.info({ image: earlier.id, bakeKey }, 'bake skipped: an image with this bake key exists');
    return { image: earlier, copies: [], release, skipped: true, bakeId: null, phases: [] };
  }

  const bakeId = `b-${randomBytes(4).toString('hex')}`;
  const log = o.log.child({ bakeId, app: o.app, version: o.version });
  const channel = bakeChannel(bakeId);
  const phases: Array<{ name: string; ms: number }> = [];
  const watch = phaseStopwatch('prepare');
  const done = (next: string) => {
    const { name, ms } = watch.next(next);
    phases.push({ name, ms });
    o.onPhase?.(name, ms);
    log.info({ phase: name, ms }, 'bake phase done');
  };
  const lineage: Tags = {
    [TAG.app]: o.app,
    [TAG.version]: manifest.version,
    [TAG.seq]: String(manifest.seq),
    [TAG.artifactSha256]: contentSha256(manifest),
    [TAG.baseImage]: o.baseImage,
    [TAG.bakeId]: bakeId,
    [TAG.bakeKey]: bakeKey,
    ...o.tags,
  };
  let builder: string | undefined;
  try {
    await promoteRelease({ store: o.store, app: o.app, version: o.version, channel, key: o.signingKey, keys: o.trustedKeys, ttlMs: t.launchMs + t.installMs });
    done('launch');
    const [inst] = await o.provider.launch({ imageId: base.id, count: 1, tags: { ...o.tags, [TAG.bakeId]: bakeId, [TAG.role]: 'builder', [TAG.app]: o.app, [TAG.release]: o.version }, boot: await o.builderBoot(channel) });
    builder = inst!.id;
    await o.provider.waitRunning([builder], { timeoutMs: t.launchMs });
    done('install');
    // The first of: the builder sealed, its agent's error, the install deadline, the builder stopped.
    const over = new AbortController();
    const sealed = await Promise.race([
      builderStops(o.provider, builder, { [TAG.bakeId]: bakeId }, over.signal),
      o.waiter.until(
        builder,
        (i) => {
          const r = i?.report;
          if (r?.installed?.manifestSha256 === manifestSha256 && r.installed.via === 'baked' && r.image?.manifestSha256 === manifestSha256) return { ok: true };
          if (r?.lastError && !TRANSIENT_S3_CODES.has(r.lastError.code)) return { ok: false, code: r.lastError.code, message: r.lastError.message };
          return undefined;
        },
        t.installMs,
        (i) => `the builder ${builder} ${i?.connected ? `reported ${i.report?.installed?.version ?? 'nothing installed'}, not ${o.version} sealed,` : 'never connected'} within ${t.installMs} ms`,
        over.signal,
      ),
    ]).finally(() => over.abort());
    if (!sealed.ok) throw new KilnError(sealed.code as 'KILN_AGENT_TIMEOUT', sealed.message);
    done('image');
    await o.provider.stop([builder], { timeoutMs: t.imageMs });
    const stamp = phases.map((p) => `${p.name}=${p.ms}`).join(',');
    const image = await o.provider.createImage(builder, { name: `${o.app}-${manifest.version}-${bakeId}`, tags: { ...lineage, 'kiln:bake-phases': stamp } }, { timeoutMs: t.imageMs });
    const copies = o.regions.length ? (done('copy'), await o.provider.copyImage(image.id, o.regions, { timeoutMs: t.imageMs })) : [];
    done('reap');
    await reap();
    done('');
    log.info({ image: image.id, phases }, 'bake done');
    return { image, copies, release, skipped: false, bakeId, phases };
  } catch (err) {
    const e = asKilnError(err);
    log.error({ err: e, phase: watch.phase }, 'bake failed: reaping what it created');
    await reap();
    // An image that appeared after a wait gave up is found by its tag.
    const left = await o.provider.describeImages({ tags: { [TAG.bakeId]: bakeId } }).catch((err: unknown) => {
      log.error({ err, bakeId }, 'cannot look for the images of a failed bake: any it made stay');
      return [];
    });
    for (const img of left) {
      await o.provider.deleteImage(img.id).catch((err) => log.error({ err, image: img.id }, 'cannot delete an image of a failed bake'));
    }
    throw new KilnError('KILN_BAKE_FAILED', `baking ${o.app} ${o.version} failed in phase ${watch.phase}: ${e.code}: ${e.message}`, { cause: e });
  }

  async function reap(): Promise<void> {
    // By tag too: a launch that failed half-way returned no id.
    const tagged = await o.provider.describeInstances({ [TAG.bakeId]: bakeId }).catch((err: unknown) => {
      log.error({ err, bakeId }, 'cannot look for the instances of the bake: only the builder is terminated');
      return [];
    });
    const ids = [...new Set([...(builder ? [builder] : []), ...tagged.map((i) => i.id)])];
    await o.provider.terminate(ids).catch((err) => log.error({ err, ids }, 'cannot terminate the builder'));
    await o.store.removePointer(o.app, channel).catch((err) => log.error({ err, channel }, "cannot remove the bake's channel"));
  }
}
