import { randomBytes } from 'node:crypto';
import { cp, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { AgentConfigInput } from '@kiln/agent';
import { KilnError, isSameProcess, readJsonFile, writeFileAtomic, type Logger } from '@kiln/shared';
import { z } from 'zod';
import { freePort } from '../../system/free-port.js';
import { agentConfigFile, spawnLocalAgent, stopLocalAgent } from './agent-process.js';
import type { InstanceInfo, Provider } from '../provider.js';
import { ImageRecord, InstanceFields, imageInfo, localCatalog, localInstances, readRecord, recordDirs, writeRecord } from '../provider-records.js';

const InstanceRecord = z.object({
  ...InstanceFields,
  /** the agent process and its start time (a reused pid is never signalled) */
  pid: z.number().int().min(2).nullable(),
  start: z.string().nullable(),
});
type InstanceRecord = z.infer<typeof InstanceRecord>;

const ID = /^(img|i)-[a-z0-9]{1,32}$/;

export const BASE_IMAGE_ID = 'img-base';

export interface ProcessProviderOptions {
  /** where images and instances live (`.kiln/process`) */
  dir: string;
  log: Logger;
  /** the environment agent processes get (default: this process's) */
  env?: Record<string, string | undefined>;
  now?: () => Date;
}

/** Files that belong to one instance, never to an image made from it. */
const INSTANCE_ONLY = ['etc/kiln/agent.json', 'var/log', 'var/lib/kiln/agent/identity.key'];

/**
 * The embedded provider: no root, no cloud. An image is a read-only snapshot directory of an
 * instance root with metadata; an instance is a copy of an image with its own agent process (the
 * real `kiln-agent`), its own port and the process supervisor for the app. Agents are detached: a
 * restarted controller finds its instances where it left them.
 */
export function createProcessProvider(o: ProcessProviderOptions): Provider {
  const log = o.log.child({ module: 'provider-process' });
  const now = o.now ?? (() => new Date());
  const dirs = recordDirs(o.dir, ID, 'process');
  const { imageDir, instanceDir } = dirs;
  const rootOf = (dir: string) => path.join(dir, 'root');
  const newId = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

  const readImage = (id: string) => readRecord(path.join(imageDir(id), 'image.json'), ImageRecord);
  const readInstance = (id: string) => readRecord(path.join(instanceDir(id), 'instance.json'), InstanceRecord);
  const saveInstance = (r: InstanceRecord) => writeRecord(instanceDir(r.id), 'instance.json', r);

  /** An instance whose agent process died is reported as stopped: nothing runs there. */
  function infoOf(r: InstanceRecord): InstanceInfo {
    const alive = isSameProcess(r.pid, r.start);
    const state = r.state === 'running' || r.state === 'pending' ? (alive ? 'running' : 'stopped') : r.state;
    return { id: r.id, imageId: r.imageId, state, tags: r.tags, address: `http://127.0.0.1:${r.port}`, launchedAt: r.launchedAt };
  }
  const { must: mustInstance, waitFor } = localInstances({ provider: 'process', readInstance, infoOf });


  /** The agent config as launch wrote it: passed on unparsed, since the agent fills in its own defaults. */
  async function agentConfigOf(r: InstanceRecord): Promise<AgentConfigInput> {
    const file = agentConfigFile(rootOf(instanceDir(r.id)));
    const config = await readJsonFile(file, z.record(z.string(), z.unknown()), { code: 'KILN_CONFIG_INVALID', what: 'the agent config' });
    if (!config) throw new KilnError('KILN_CONFIG_INVALID', `the agent config ${file} of ${r.id} is missing`);
    return config as AgentConfigInput;
  }

  async function startAgent(r: InstanceRecord): Promise<void> {
    const root = rootOf(instanceDir(r.id));
    const config = await agentConfigOf(r);
    const agent = await spawnLocalAgent({ root, config, env: o.env ?? process.env });
    Object.assign(r, { pid: agent.pid, start: agent.start, state: 'running' });
    await saveInstance(r);
  }

  async function stopOne(r: InstanceRecord): Promise<void> {
    if (r.pid !== null) {
      r.state = 'stopping';
      await saveInstance(r);
      const app = typeof r.tags['kiln:app'] === 'string' ? r.tags['kiln:app'] : await appOf(r);
      await stopLocalAgent({ instanceId: r.id, root: rootOf(instanceDir(r.id)), port: r.port, pid: r.pid, start: r.start, log: '' }, app, log);
    }
    Object.assign(r, { state: 'stopped', pid: null, start: null });
    await saveInstance(r);
  }

  async function appOf(r: InstanceRecord): Promise<string> {
    return (await agentConfigOf(r)).app;
  }

  const provider = {
    name: 'process' as const,

    async defaultImage() {
      const have = await readImage(BASE_IMAGE_ID);
      if (have) return imageInfo(have);
      // A plain machine: an empty root. The agent comes from kiln itself, like an image that has it installed.
      await mkdir(path.join(rootOf(imageDir(BASE_IMAGE_ID)), 'etc/kiln'), { recursive: true });
      const rec: ImageRecord = { id: BASE_IMAGE_ID, name: 'base', state: 'available', parent: null, tags: { 'kiln:role': 'base' }, createdAt: now().toISOString() };
      await writeRecord(imageDir(BASE_IMAGE_ID), 'image.json', rec);
      return imageInfo(rec);
    },

    async launch(spec) {
      const image = await readImage(spec.imageId);
      if (!image || image.state !== 'available') throw new KilnError('KILN_IMAGE_NOT_FOUND', `no available process image ${spec.imageId}; \`kiln images\` lists them`);
      const launched: InstanceInfo[] = [];
      for (let n = 0; n < spec.count; n++) {
        const id = newId('i');
        const dir = instanceDir(id);
        const root = rootOf(dir);
        const rec: InstanceRecord = { id, imageId: image.id, state: 'pending', tags: spec.tags, port: await freePort(), pid: null, start: null, launchedAt: now().toISOString() };
        try {
          await cp(rootOf(imageDir(image.id)), root, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
          const config = { ...spec.boot.agent, instanceId: id, imageId: image.id, port: rec.port };
          await mkdir(path.join(root, 'etc/kiln'), { recursive: true });
          await writeFileAtomic(path.join(root, 'etc/kiln/agent.json'), JSON.stringify(config, null, 2) + '\n', 0o600);
          await saveInstance(rec);
          await startAgent(rec);
        } catch (err) {
          await rm(dir, { recursive: true, force: true });
          throw err instanceof KilnError ? err : new KilnError('KILN_PROVIDER_FAILED', `cannot launch a process instance from ${image.id}: ${(err as Error).message}`, { cause: err });
        }
        launched.push(infoOf(rec));
        log.info({ instanceId: id, imageId: image.id, port: rec.port }, 'instance launched');
      }
      return launched;
    },

    waitRunning: (ids, opts) => waitFor(ids, 'running', opts),

    async stop(ids) {
      for (const id of ids) {
        const r = await mustInstance(id);
        if (r.state !== 'stopped') await stopOne(r);
      }
    },

    async start(ids, opts) {
      for (const id of ids) {
        const r = await mustInstance(id);
        if (infoOf(r).state !== 'running') await startAgent(r);
      }
      await waitFor(ids, 'running', opts);
    },

    async terminate(ids) {
      for (const id of ids) {
        const r = await readInstance(id);
        if (!r) continue;
        if (r.state !== 'stopped' && r.state !== 'terminated') await stopOne(r);
        await rm(instanceDir(id), { recursive: true, force: true });
        log.info({ instanceId: id }, 'instance terminated');
      }
    },

    async createImage(instanceId, spec) {
      const r = await mustInstance(instanceId);
      if (infoOf(r).state !== 'stopped') await stopOne(r);
      const id = newId('img');
      const rec: ImageRecord = { id, name: spec.name, state: 'pending', parent: r.imageId, tags: spec.tags, createdAt: now().toISOString() };
      try {
        await mkdir(imageDir(id), { recursive: true });
        await writeRecord(imageDir(id), 'image.json', rec);
        const from = rootOf(instanceDir(instanceId));
        const skip = new Set(INSTANCE_ONLY.map((p) => path.join(from, p)));
        await cp(from, rootOf(imageDir(id)), { recursive: true, verbatimSymlinks: true, preserveTimestamps: true, filter: (src) => !skip.has(src) });
        rec.state = 'available';
        await writeRecord(imageDir(id), 'image.json', rec);
      } catch (err) {
        await rm(imageDir(id), { recursive: true, force: true });
        throw new KilnError('KILN_PROVIDER_FAILED', `cannot create an image from ${instanceId}: ${(err as Error).message}`, { cause: err });
      }
      log.info({ imageId: id, from: instanceId }, 'image created');
      return imageInfo(rec);
    },

    ...localCatalog({ provider: 'process', dirs, idPattern: ID, readImage, readInstance, infoOf }),

    async deleteImage(imageId) {
      await rm(imageDir(imageId), { recursive: true, force: true });
      log.info({ imageId }, 'image deleted');
    },
  } satisfies Provider;
  return provider;
}
