import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, ifMissing, pollUntil, readJsonFile, writeFileAtomic } from '@kiln/shared';
import { z } from 'zod';
import type { ImageInfo, InstanceInfo, Provider, Tags, WaitOptions } from './provider.js';

/**
 * The on-disk records of the local providers (process, nspawn): `images/ID/image.json` and
 * `instances/ID/instance.json`, each written atomically, each parsed with its schema on read.
 */

export const Tagged = { tags: z.record(z.string(), z.string()) };

export const ImageRecord = z.object({ id: z.string(), name: z.string(), state: z.enum(['pending', 'available', 'failed']), parent: z.string().nullable(), ...Tagged, createdAt: z.string() });
export type ImageRecord = z.infer<typeof ImageRecord>;

/** What every local instance record holds; a provider adds its own fields. */
export const InstanceFields = {
  id: z.string(),
  imageId: z.string(),
  state: z.enum(['pending', 'running', 'stopping', 'stopped', 'terminated']),
  ...Tagged,
  /** the app's port (PORT) on the host's loopback, kept across stop and start */
  port: z.number().int(),
  launchedAt: z.string(),
};

export const imageInfo = (r: ImageRecord): ImageInfo => ({ id: r.id, name: r.name, state: r.state, tags: r.tags, createdAt: r.createdAt });

export const hasTags = (have: Tags, want: Tags) => Object.entries(want).every(([k, v]) => have[k] === v);

export interface RecordDirs {
  imageDir(id: string): string;
  instanceDir(id: string): string;
  imagesDir: string;
  instancesDir: string;
}

/**
 * Where a provider's images and instances live. Ids come from API callers: only ids matching `idPattern`
 * (ids this provider could have made) name a directory, anything else is not found.
 */
export function recordDirs(dir: string, idPattern: RegExp, provider: string): RecordDirs {
  const imagesDir = path.join(dir, 'images');
  const instancesDir = path.join(dir, 'instances');
  const safe = (id: string, kind: 'image' | 'instance') => {
    if (!idPattern.test(id)) throw new KilnError(kind === 'image' ? 'KILN_IMAGE_NOT_FOUND' : 'KILN_INSTANCE_NOT_FOUND', `${JSON.stringify(id)} is not a ${provider}-provider ${kind} id`);
    return id;
  };
  return {
    imagesDir,
    instancesDir,
    imageDir: (id) => path.join(imagesDir, safe(id, 'image')),
    instanceDir: (id) => path.join(instancesDir, safe(id, 'instance')),
  };
}

/** A record, or undefined when the file is missing; KILN_STATE_INVALID when it is not JSON or does not match. */
export const readRecord = <T>(file: string, schema: z.ZodType<T>): Promise<T | undefined> => readJsonFile(file, schema, { code: 'KILN_STATE_INVALID', what: 'the provider record' });

export const writeRecord = (dir: string, name: string, rec: unknown) => writeFileAtomic(path.join(dir, name), JSON.stringify(rec, null, 2) + '\n');

/** Every record under `dir` whose directory name matches `idPattern`, in name order. */
export async function listRecords<T>(dir: string, idPattern: RegExp, read: (id: string) => Promise<T | undefined>): Promise<T[]> {
  const names = (await ifMissing(readdir(dir), [])).filter((n) => idPattern.test(n)).sort();
  return (await Promise.all(names.map(read))).filter((r): r is Awaited<T> & T => r !== undefined);
}

/** The calls both local providers answer alike: describe by tags (or image ids), and no regions to copy images to. */
export function localCatalog<I extends { state: string; tags: Tags }>(o: {
  provider: string;
  dirs: RecordDirs;
  idPattern: RegExp;
  readImage: (id: string) => Promise<ImageRecord | undefined>;
  readInstance: (id: string) => Promise<I | undefined>;
  infoOf: (r: I) => InstanceInfo;
}): Pick<Provider, 'copyImage' | 'describeInstances' | 'describeImages'> {
  return {
    async copyImage(imageId, regions) {
      if (regions.length) throw new KilnError('KILN_PROVIDER_FAILED', `the ${o.provider} provider has no regions to copy ${imageId} to (asked: ${regions.join(', ')})`);
      return [];
    },
    async describeInstances(tags) {
      const all = await listRecords(o.dirs.instancesDir, o.idPattern, o.readInstance);
      return all.filter((r) => r.state !== 'terminated' && hasTags(r.tags, tags)).map(o.infoOf);
    },
    async describeImages(query) {
      const all = await listRecords(o.dirs.imagesDir, o.idPattern, o.readImage);
      return all.filter((r) => (!query.ids || query.ids.includes(r.id)) && hasTags(r.tags, query.tags ?? {})).map(imageInfo);
    },
  };
}

/** A local provider's instance lookups: one that must exist, and a wait until instances reach a state. */
export function localInstances<I extends { state: string }>(o: { provider: string; readInstance: (id: string) => Promise<I | undefined>; infoOf: (r: I) => InstanceInfo }) {
  async function must(id: string): Promise<I> {
    const r = await o.readInstance(id);
    if (!r || r.state === 'terminated') throw new KilnError('KILN_INSTANCE_NOT_FOUND', `no ${o.provider} instance ${id}; \`kiln instances\` lists them`);
    return r;
  }
  async function waitFor(ids: string[], want: InstanceInfo['state'], opts: WaitOptions): Promise<InstanceInfo[]> {
    let infos: InstanceInfo[] = [];
    return pollUntil({
      check: async () => {
        infos = await Promise.all(ids.map(async (id) => o.infoOf(await must(id))));
        return infos.every((i) => i.state === want) && infos;
      },
      timeoutMs: opts.timeoutMs,
      intervalMs: 50,
      signal: opts.signal,
      timeoutError: () => {
        const stuck = infos.filter((i) => i.state !== want).map((i) => `${i.id} (${i.state})`);
        return new KilnError('KILN_PROVIDER_TIMEOUT', `instances did not become ${want} within ${opts.timeoutMs} ms: ${stuck.join(', ')}`);
      },
    });
  }
  return { must, waitFor };
}
