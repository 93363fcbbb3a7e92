import { randomBytes } from 'node:crypto';
import { AppName, KilnError, VersionName, asKilnError, type DocStore, type Logger, type ReleaseStore } from '@kiln/shared';
import { z } from 'zod';
import { baseImageOf, reapBakes, type BakeResult } from './bake.js';
import { TAG, type Provider } from '../providers/provider.js';

export const BakeCreate = z.strictObject({
  app: AppName,
  version: VersionName,
  baseImage: z.string().min(1).max(256),
  regions: z.array(z.string().regex(/^[a-z0-9-]{2,32}$/, 'a region name')).max(20).default([]),
});
export type BakeCreate = z.infer<typeof BakeCreate>;

/** A standalone bake (`kiln bake`), kept in the bucket like a deployment. */
export const BakeRecord = BakeCreate.extend({
  id: z.string(),
  state: z.enum(['running', 'succeeded', 'failed']),
  image: z.string().nullable(),
  copies: z.array(z.strictObject({ id: z.string(), region: z.string().optional() })),
  skipped: z.boolean(),
  phases: z.array(z.strictObject({ name: z.string(), ms: z.number() })),
  error: z.strictObject({ code: z.string(), message: z.string() }).nullable(),
  createdAt: z.string(),
  finishedAt: z.string().nullable(),
});
export type BakeRecord = z.infer<typeof BakeRecord>;

const keyOf = (id: string) => `controller/bakes/${id}.json`;

export interface Bakes {
  /** KILN_IMAGE_NOT_FOUND at once for a base image that does not exist; the bake itself runs on. */
  start(input: BakeCreate): Promise<BakeRecord>;
  get(id: string): Promise<BakeRecord>;
  /** At start: bakes a previous controller left running are marked failed and what they made is reaped. */
  resume(): Promise<void>;
  idle(): Promise<void>;
  /** The controller is stopping: the outcome of a bake it abandons is not written; the next controller marks it interrupted. */
  close(): void;
}

export function createBakes(o: {
  docs: DocStore;
  provider: Provider;
  store: ReleaseStore;
  bake: (input: BakeCreate, tags: Record<string, string>, onPhase: (name: string, ms: number) => void) => Promise<BakeResult>;
  log: Logger;
  now: () => Date;
}): Bakes {
  const running = new Map<string, { record: BakeRecord; done: Promise<void> }>();
  const save = (r: BakeRecord) => o.docs.put(keyOf(r.id), r);
  let closed = false;

  return {
    async start(input) {
      await baseImageOf(o.provider, input.baseImage);
      const at = o.now().toISOString();
      const record: BakeRecord = { ...input, id: `k-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`, state: 'running', image: null, copies: [], skipped: false, phases: [], error: null, createdAt: at, finishedAt: null };
      await save(record);
      const done = o
        .bake(input, { [TAG.deployment]: record.id }, (name, ms) => record.phases.push({ name, ms }))
        .then((r) => Object.assign(record, { state: 'succeeded', image: r.image.id, copies: r.copies.map((c) => ({ id: c.id, ...(c.region ? { region: c.region } : {}) })), skipped: r.skipped }))
        .catch((err) => {
          const e = asKilnError(err);
          Object.assign(record, { state: 'failed', error: { code: e.code, message: e.message } });
        })
        .then(async () => {
          // A bake failed by the controller stopping was abandoned, not failed: the next controller says so.
          if (closed && record.state === 'failed') return;
          record.finishedAt = o.now().toISOString();
          await save(record).catch((err) => o.log.error({ err, id: record.id }, 'cannot write the bake record'));
        })
        .finally(() => running.delete(record.id));
      running.set(record.id, { record, done });
      return record;
    },
    async get(id) {
      const live = running.get(id);
      if (live) return live.record;
      const rec = /^k-[a-z0-9]+-[0-9a-f]{6}$/.test(id) ? await o.docs.get(keyOf(id), BakeRecord) : undefined;
      if (!rec) throw new KilnError('KILN_DEPLOYMENT_NOT_FOUND', `no bake ${JSON.stringify(id)}`);
      return rec;
    },
    async resume() {
      for (const key of await o.docs.list('controller/bakes/')) {
        const rec = await o.docs.get(key, BakeRecord).catch((err: unknown) => {
          o.log.error({ err, key }, 'skipping a bake record that cannot be read');
          return undefined;
        });
        if (!rec || rec.state !== 'running' || running.has(rec.id)) continue;
        await reapBakes({ provider: o.provider, store: o.store, tags: { [TAG.deployment]: rec.id } });
        Object.assign(rec, { state: 'failed', error: { code: 'KILN_INTERRUPTED', message: 'the controller restarted during this bake; its builder was reaped' }, finishedAt: o.now().toISOString() });
        await save(rec);
        o.log.warn({ id: rec.id }, 'a bake was interrupted by a controller restart: reaped');
      }
    },
    async idle() {
      await Promise.all([...running.values()].map((r) => r.done));
    },
    close() {
      closed = true;
    },
  };
}
