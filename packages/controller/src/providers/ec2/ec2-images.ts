import { randomUUID } from 'node:crypto';
import type { Filter, Image, TagSpecification } from '@aws-sdk/client-ec2';
import { KilnError } from '@kiln/shared';
import { ec2Call, ec2CallTolerating, fromEc2Tags, tagFilters, toEc2Tags, waitFor, type Ec2Context } from './ec2-calls.js';
import { ec2Sdk } from './ec2-sdk.js';
import { ensureStopped } from './ec2-instances.js';
import { TAG, type ImageInfo, type Tags, type WaitOptions } from '../provider.js';

const IMAGE_NOT_FOUND = ['InvalidAMIID.NotFound', 'InvalidAMIID.Unavailable'];
const SNAPSHOT_NOT_FOUND = ['InvalidSnapshot.NotFound'];

export function toImageInfo(image: Image, region: string): ImageInfo {
  const state = image.State === 'pending' || image.State === 'available' ? image.State : 'failed';
  return { id: image.ImageId ?? '', name: image.Name ?? '', state, region, tags: fromEc2Tags(image.Tags), createdAt: image.CreationDate ?? '' };
}

/** The image and its snapshots carry the tags: a reap by tag finds both. */
function imageTagSpecs(tags: Tags): TagSpecification[] {
  return (['image', 'snapshot'] as const).map((ResourceType) => ({ ResourceType, Tags: toEc2Tags(tags) }));
}

/** Own images by tags and/or ids, all pages. Ids go in as a filter, so an unknown id is absent rather than an error. */
async function describeRaw(ctx: Ec2Context, query: { tags?: Tags; ids?: string[] }, signal?: AbortSignal): Promise<Image[]> {
  const filters: Filter[] = [...tagFilters(query.tags ?? {})];
  if (query.ids) filters.push({ Name: 'image-id', Values: query.ids });
  if (filters.length === 0) throw new Error('describeImages needs tags or ids');
  const out: Image[] = [];
  let token: string | undefined;
  do {
    const page = await ec2Call(
      'DescribeImages',
      () => ctx.client.send(new (ec2Sdk().DescribeImagesCommand)({ Owners: ['self'], Filters: filters, NextToken: token }), signal ? { abortSignal: signal } : {}),
      signal,
    );
    out.push(...(page.Images ?? []));
    token = page.NextToken;
  } while (token);
  return out;
}

export async function describeImagesIn(ctx: Ec2Context, query: { tags?: Tags; ids?: string[] }): Promise<ImageInfo[]> {
  if (query.ids?.length === 0) return [];
  return (await describeRaw(ctx, query)).map((i) => toImageInfo(i, ctx.region));
}

/** Deregisters the image, then deletes its snapshots (deregistering alone leaves them, billed). Unknown ids are no error. */
export async function deleteImageIn(ctx: Ec2Context, imageId: string): Promise<void> {
  const [image] = await describeRaw(ctx, { ids: [imageId] });
  if (!image) return;
  const snapshots = (image.BlockDeviceMappings ?? []).flatMap((m) => (m.Ebs?.SnapshotId ? [m.Ebs.SnapshotId] : []));
  await ec2CallTolerating('DeregisterImage', IMAGE_NOT_FOUND, () => ctx.client.send(new (ec2Sdk().DeregisterImageCommand)({ ImageId: imageId })));
  await deleteSnapshots(ctx, snapshots);
  ctx.log.info({ imageId, snapshots }, 'deleted image and its snapshots');
}

async function deleteSnapshots(ctx: Ec2Context, ids: string[]): Promise<void> {
  for (const id of ids) {
    await ec2CallTolerating('DeleteSnapshot', SNAPSHOT_NOT_FOUND, () => ctx.client.send(new (ec2Sdk().DeleteSnapshotCommand)({ SnapshotId: id })));
  }
}

/**
 * After a failed or timed-out wait: the image may still be pending and complete later, so it is
 * deregistered now, with its snapshots, and also every snapshot of this bake made for this image
 * (found by tag: a pending image may not list them yet). Never throws: the caller's error is the
 * one to report; a reap failure is logged with the ids to clean up by hand.
 */
async function reapImage(ctx: Ec2Context, imageId: string, tags: Tags): Promise<void> {
  try {
    await deleteImageIn(ctx, imageId);
    const bakeId = tags[TAG.bakeId];
    if (bakeId === undefined) return;
    const page = await ec2Call('DescribeSnapshots', () =>
      ctx.client.send(
        new (ec2Sdk().DescribeSnapshotsCommand)({
          OwnerIds: ['self'],
          Filters: [
            { Name: `tag:${TAG.bakeId}`, Values: [bakeId] },
            { Name: 'description', Values: [`*${imageId}*`] },
          ],
        }),
      ),
    );
    await deleteSnapshots(ctx, (page.Snapshots ?? []).flatMap((s) => (s.SnapshotId ? [s.SnapshotId] : [])));
  } catch (err) {
    ctx.log.error({ err, imageId }, 'could not reap the image of a failed wait: delete it and its snapshots by hand');
  }
}

interface ImageWait extends WaitOptions {
  deadline: number;
}

/** Resolves when the image is available; a failed image is KILN_PROVIDER_FAILED. The caller reaps. */
function waitImageAvailable(ctx: Ec2Context, imageId: string, opts: ImageWait): Promise<ImageInfo> {
  return waitFor({
    ctx,
    deadline: opts.deadline,
    timeoutMs: opts.timeoutMs,
    what: `image ${imageId} in ${ctx.region} to be available`,
    ...(opts.signal ? { signal: opts.signal } : {}),
    check: async (signal) => {
      const [image] = await describeRaw(ctx, { ids: [imageId] }, signal);
      if (image?.State === 'available') return { done: true, value: toImageInfo(image, ctx.region) };
      if (!image || image.State === 'pending') return { done: false, stuck: `${imageId} (${image?.State ?? 'not found'})` };
      throw new KilnError('KILN_PROVIDER_FAILED', `ec2 image ${imageId} in ${ctx.region} went ${image.State}: ${image.StateReason?.Message ?? 'no reason given'}`);
    },
  });
}

export async function createImageFrom(ctx: Ec2Context, instanceId: string, spec: { name: string; tags: Tags }, opts: WaitOptions): Promise<ImageInfo> {
  const deadline = ctx.now() + opts.timeoutMs;
  await ensureStopped(ctx, instanceId, deadline, opts);
  const created = await ec2Call('CreateImage', () =>
    ctx.client.send(new (ec2Sdk().CreateImageCommand)({ InstanceId: instanceId, Name: spec.name, TagSpecifications: imageTagSpecs(spec.tags) })),
  );
  if (!created.ImageId) throw new KilnError('KILN_PROVIDER_FAILED', `ec2 CreateImage failed: it returned no image id for ${instanceId}`);
  ctx.log.info({ imageId: created.ImageId, instanceId }, 'image creation started');
  try {
    return await waitImageAvailable(ctx, created.ImageId, { ...opts, deadline });
  } catch (err) {
    await reapImage(ctx, created.ImageId, spec.tags);
    throw err;
  }
}

/**
 * Copies to every region at once. The first failure stops the other waits; then every copy made,
 * finished or not, is deleted in its region (with its snapshots) and that first error is thrown.
 */
export async function copyImageTo(home: Ec2Context, ctxFor: (region: string) => Ec2Context, imageId: string, regions: string[], opts: WaitOptions): Promise<ImageInfo[]> {
  const deadline = home.now() + opts.timeoutMs;
  const [source] = await describeRaw(home, { ids: [imageId] });
  if (!source) throw new KilnError('KILN_IMAGE_NOT_FOUND', `ec2 image ${imageId} does not exist in ${home.region}`);
  const tags = fromEc2Tags(source.Tags);
  const stopAll = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stopAll.signal]) : stopAll.signal;
  const copies: Array<{ ctx: Ec2Context; id: string }> = [];
  let first: unknown;
  const results = await Promise.allSettled(
    regions.map(async (region) => {
      const ctx = ctxFor(region);
      try {
        const out = await ec2Call(`CopyImage (to ${region})`, () =>
          ctx.client.send(
            new (ec2Sdk().CopyImageCommand)({ SourceImageId: imageId, SourceRegion: home.region, Name: source.Name, ClientToken: randomUUID(), TagSpecifications: imageTagSpecs(tags) }),
          ),
        );
        if (!out.ImageId) throw new KilnError('KILN_PROVIDER_FAILED', `ec2 CopyImage (to ${region}) failed: it returned no image id`);
        copies.push({ ctx, id: out.ImageId });
        return await waitImageAvailable(ctx, out.ImageId, { timeoutMs: opts.timeoutMs, deadline, signal });
      } catch (err) {
        first ??= err;
        stopAll.abort();
        throw err;
      }
    }),
  );
  if (results.every((r) => r.status === 'fulfilled')) return results.map((r) => (r as PromiseFulfilledResult<ImageInfo>).value);
  await Promise.all(copies.map((c) => reapImage(c.ctx, c.id, tags)));
  throw first;
}
