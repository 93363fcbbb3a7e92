import { createHash, randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, ifMissing, isValidName, writeFileAtomic, type Logger } from '@kiln/shared';
import { z } from 'zod';
import { buildAgentBundle, type AgentBundle } from '../agent-bundle.js';
import { freePort } from '../../system/free-port.js';
import { checkNspawnHost, type NspawnTools } from './nspawn-host.js';
import { createMachineGroup, type MachineGroup } from './nspawn-group.js';
import type { Machine } from './nspawn-machine.js';
import { BASE_ROOTFS_RECIPE, ensureBaseRootfs } from './nspawn-rootfs.js';
import { linkTree, snapshotLayers } from './nspawn-snapshot.js';
import type { ImageInfo, InstanceInfo, Provider } from '../provider.js';
import { ImageRecord, InstanceFields, imageInfo, localCatalog, localInstances, readRecord, recordDirs, writeRecord } from '../provider-records.js';

// The app's port is on the host's loopback, which the machines share.
const InstanceRecord = z.object(InstanceFields);
type InstanceRecord = z.infer<typeof InstanceRecord>;

// Machine names are instance ids: they must also be valid host names.
const ID = /^(img|i)-[a-z0-9]{1,32}(-[a-z0-9]{1,16})?$/;

export interface NspawnProviderOptions {
  /** where images and instances live (`.kiln/nspawn`) */
  dir: string;
  log: Logger;
  /** where the debootstrapped base tree is cached (kilnCacheDir()) */
  cacheDir: string;
  /** Debian mirror for a first build of the base tree (default: the host's apt mirror) */
  mirror?: string;
  /** the agent baked into the base image (default: bundled from this checkout on first use) */
  agentBundle?: AgentBundle;
  /** how long a machine gets from systemd-nspawn to a running systemd (default 60 s) */
  bootTimeoutMs?: number;
  now?: () => Date;
}

export interface NspawnProvider extends Provider {
  /** the running machine of an instance (to look inside: systemctl, journal, exec), if this provider booted it */
  machineOf(instanceId: string): Machine | undefined;
  /** kills every machine this provider booted and waits until they are gone (they die with this process anyway) */
  shutdown(): Promise<void>;
}

/** Files that belong to one instance, never to an image made from it. */
const INSTANCE_ONLY = ['etc/kiln/agent.json', 'var/lib/systemd/random-seed', 'var/lib/kiln/agent/identity.key'];
const UNITS = 'etc/systemd/system';
const PORT_DROP_IN = '50-kiln-instance-port.conf';

/**
 * The instance's port for its app unit, whatever unit the image holds: the unit a builder wrote
 * carries the builder's PORT, and a baked image starts it at boot before (and without) any install.
 */
async function writePortDropIn(upper: string, app: unknown, port: number): Promise<void> {
  if (typeof app !== 'string' || !isValidName('app', app)) return; // the agent refuses such a config anyway
  const dir = path.join(upper, UNITS, `kiln-app-${app}.service.d`);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await writeFileAtomic(path.join(dir, PORT_DROP_IN), `# this instance's port for its app (kiln nspawn provider)\n[Service]\nEnvironment=PORT=${port}\n`);
}

/**
 * Real machines on this host: an image is a read-only root filesystem (`images/ID/root`) with
 * metadata; an instance boots it with its own systemd (systemd-nspawn --boot) over an overlay whose
 * upper layer (`instances/ID/upper`) holds all it changes, so images are never written. Machines
 * share the host's network: each instance's app gets its own port on 127.0.0.1, and agents reach
 * the controller and S3 on the host's loopback. Machines are children of this process and die with
 * it: after a controller restart, instances are `stopped` and `start` boots them again over their layers.
 */
export function createNspawnProvider(o: NspawnProviderOptions): NspawnProvider {
  const tools: NspawnTools = checkNspawnHost({ debootstrap: false }); // before anything else
  const log = o.log.child({ module: 'provider-nspawn' });
  const now = o.now ?? (() => new Date());
  const bootTimeoutMs = o.bootTimeoutMs ?? 60_000;
  const dirs = recordDirs(o.dir, ID, 'nspawn');
  const { imageDir, instanceDir } = dirs;
  const rootOf = (imageId: string) => path.join(imageDir(imageId), 'root');
  const upperOf = (id: string) => path.join(instanceDir(id), 'upper');
  const newId = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
  const group: MachineGroup = createMachineGroup();
  const machines = new Map<string, Machine>();
  const booting = new Set<string>();
  let base: Promise<ImageInfo> | undefined;

  const readImage = (id: string) => readRecord(path.join(imageDir(id), 'image.json'), ImageRecord);
  const saveImage = (r: ImageRecord) => writeRecord(imageDir(r.id), 'image.json', r);
  const readInstance = (id: string) => readRecord(path.join(instanceDir(id), 'instance.json'), InstanceRecord);
  const saveInstance = (r: InstanceRecord) => writeRecord(instanceDir(r.id), 'instance.json', r);

  /** An instance whose machine is not running (it exited, or a controller before this one booted it) is stopped. */
  function infoOf(r: InstanceRecord): InstanceInfo {
    let state = r.state;
    if (state === 'pending' || state === 'running') state = booting.has(r.id) ? 'pending' : machines.get(r.id)?.running() ? 'running' : 'stopped';
    return { id: r.id, imageId: r.imageId, state, tags: r.tags, address: `http://127.0.0.1:${r.port}`, launchedAt: r.launchedAt };
  }
  const { must: mustInstance, waitFor } = localInstances({ provider: 'nspawn', readInstance, infoOf });

  async function boot(r: InstanceRecord): Promise<void> {
    booting.add(r.id);
    try {
      const m = await group.boot({ image: rootOf(r.imageId), upperDir: upperOf(r.id), name: r.id, log, bootTimeoutMs, tools });
      machines.set(r.id, m);
      r.state = 'running';
      await saveInstance(r);
    } finally {
      booting.delete(r.id);
    }
  }

  async function stopOne(r: InstanceRecord, timeoutMs: number): Promise<void> {
    const m = machines.get(r.id);
    if (m?.running()) {
      r.state = 'stopping';
      await saveInstance(r);
      await m.poweroff({ timeoutMs });
    }
    machines.delete(r.id);
    r.state = 'stopped';
    await saveInstance(r);
  }

  /** The cached Debian tree (hard links) plus the agent bundle and its unit, enabled. */
  async function buildBase(): Promise<ImageInfo> {
    const rootfs = await ensureBaseRootfs({ cacheDir: o.cacheDir, log, ...(o.mirror ? { mirror: o.mirror } : {}) });
    const bundle = o.agentBundle ?? (await buildAgentBundle({ outDir: path.join(o.dir, 'agent'), log }));
    const id = `img-base-${createHash('sha256').update(`${BASE_ROOTFS_RECIPE}\n${bundle.version}`).digest('hex').slice(0, 12)}`;
    const have = await readImage(id);
    if (have?.state === 'available') return imageInfo(have);
    const started = Date.now();
    const dir = imageDir(id);
    await rm(dir, { recursive: true, force: true }); // an interrupted build of the same base
    const rec: ImageRecord = { id, name: 'base', state: 'pending', parent: null, tags: { 'kiln:role': 'base', 'kiln:agent-version': bundle.version, 'kiln:rootfs': BASE_ROOTFS_RECIPE }, createdAt: now().toISOString() };
    try {
      await mkdir(dir, { recursive: true });
      await saveImage(rec);
      await linkTree(rootfs, rootOf(id), 120_000);
      // New files only: the tree's own files are links into the cache and must never be written.
      const root = rootOf(id);
      await mkdir(path.join(root, 'usr/local/bin'), { recursive: true });
      await copyFile(bundle.file, path.join(root, 'usr/local/bin/kiln-agent'));
      await chmod(path.join(root, 'usr/local/bin/kiln-agent'), 0o755);
      const units = path.join(root, 'etc/systemd/system');
      await copyFile(bundle.unit, path.join(units, 'kiln-agent.service'));
      await mkdir(path.join(units, 'multi-user.target.wants'), { recursive: true });
      await symlink('/etc/systemd/system/kiln-agent.service', path.join(units, 'multi-user.target.wants/kiln-agent.service'));
      rec.state = 'available';
      await saveImage(rec);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err instanceof KilnError ? err : new KilnError('KILN_BASE_IMAGE_FAILED', `cannot build the nspawn base image: ${(err as Error).message}`, { cause: err });
    }
    log.info({ imageId: id, agent: bundle.version, ms: Date.now() - started }, 'base image built');
    return imageInfo(rec);
  }

  /** Leaves nothing of the instance that made it: its agent config, identity and journal. */
  async function scrubInstanceFiles(root: string): Promise<void> {
    await Promise.all(INSTANCE_ONLY.map((p) => rm(path.join(root, p), { force: true })));
    // Empty: each instance gets its own machine id at its first boot.
    await rm(path.join(root, 'etc/machine-id'), { force: true });
    await writeFile(path.join(root, 'etc/machine-id'), '', { mode: 0o444 });
    for (const name of await ifMissing(readdir(path.join(root, UNITS)), [])) {
      if (name.endsWith('.service.d')) await rm(path.join(root, UNITS, name, PORT_DROP_IN), { force: true });
    }
    const journal = path.join(root, 'var/log/journal');
    for (const name of await ifMissing(readdir(journal), [])) await rm(path.join(journal, name), { recursive: true, force: true });
  }

  const provider: NspawnProvider = {
    name: 'nspawn' as const,

    defaultImage() {
      base ??= buildBase().finally(() => (base = undefined));
      return base;
    },

    async launch(spec) {
      const image = await readImage(spec.imageId);
      if (!image || image.state !== 'available') throw new KilnError('KILN_IMAGE_NOT_FOUND', `no available nspawn image ${spec.imageId}; \`kiln images\` lists them`);
      const recs: InstanceRecord[] = [];
      try {
        for (let n = 0; n < spec.count; n++) {
          const id = newId('i');
          const rec: InstanceRecord = { id, imageId: image.id, state: 'pending', tags: spec.tags, port: await freePort(), launchedAt: now().toISOString() };
          // The machine runs its apps as systemd units: that is what it is for.
          const config = { ...spec.boot.agent, serviceManager: 'systemd', instanceId: id, imageId: image.id, port: rec.port };
          await mkdir(path.join(upperOf(id), 'etc/kiln'), { recursive: true, mode: 0o755 });
          await writeFileAtomic(path.join(upperOf(id), 'etc/kiln/agent.json'), JSON.stringify(config, null, 2) + '\n', 0o600);
          await writePortDropIn(upperOf(id), spec.boot.agent.app, rec.port);
          await saveInstance(rec);
          recs.push(rec);
        }
        await Promise.all(recs.map(boot));
      } catch (err) {
        await provider.terminate(recs.map((r) => r.id)).catch((e: unknown) => log.error({ err: e }, 'cannot remove the instances of a failed launch'));
        throw err instanceof KilnError ? err : new KilnError('KILN_PROVIDER_FAILED', `cannot launch an nspawn instance from ${image.id}: ${(err as Error).message}`, { cause: err });
      }
      for (const r of recs) log.info({ instanceId: r.id, imageId: image.id, port: r.port }, 'instance launched');
      return recs.map(infoOf);
    },

    waitRunning: (ids, opts) => waitFor(ids, 'running', opts),

    async stop(ids, opts) {
      await Promise.all(ids.map(async (id) => stopOne(await mustInstance(id), Math.min(opts.timeoutMs, 30_000))));
    },

    async start(ids, opts) {
      const recs = await Promise.all(ids.map(mustInstance));
      await Promise.all(recs.filter((r) => infoOf(r).state !== 'running').map(boot));
      await waitFor(ids, 'running', opts);
    },

    async terminate(ids) {
      await Promise.all(
        ids.map(async (id) => {
          const r = await readInstance(id);
          if (!r) return;
          await machines.get(id)?.kill();
          machines.delete(id);
          await rm(instanceDir(id), { recursive: true, force: true });
          log.info({ instanceId: id }, 'instance terminated');
        }),
      );
    },

    async createImage(instanceId, spec, opts) {
      const r = await mustInstance(instanceId);
      if (infoOf(r).state !== 'stopped') await stopOne(r, Math.min(opts.timeoutMs, 30_000));
      const id = newId('img');
      const rec: ImageRecord = { id, name: spec.name, state: 'pending', parent: r.imageId, tags: spec.tags, createdAt: now().toISOString() };
      const started = Date.now();
      try {
        await mkdir(imageDir(id), { recursive: true });
        await saveImage(rec);
        await snapshotLayers({ lower: rootOf(r.imageId), upper: upperOf(instanceId), dest: rootOf(id), tools, timeoutMs: opts.timeoutMs, log });
        await scrubInstanceFiles(rootOf(id));
        rec.state = 'available';
        await saveImage(rec);
      } catch (err) {
        await rm(imageDir(id), { recursive: true, force: true });
        throw new KilnError('KILN_PROVIDER_FAILED', `cannot create an image from ${instanceId}: ${(err as Error).message}`, { cause: err });
      }
      log.info({ imageId: id, from: instanceId, ms: Date.now() - started }, 'image created');
      return imageInfo(rec);
    },

    ...localCatalog({ provider: 'nspawn', dirs, idPattern: ID, readImage, readInstance, infoOf }),

    async deleteImage(imageId) {
      const dir = imageDir(imageId);
      const users = [...machines.entries()].filter(([, m]) => m.running()).map(([id]) => id);
      const using = (await Promise.all(users.map(readInstance))).filter((r) => r?.imageId === imageId).map((r) => r!.id);
      // Its tree is the lower layer of those machines: removing it would pull files from under them.
      if (using.length) throw new KilnError('KILN_PROVIDER_FAILED', `image ${imageId} is the root of running instances (${using.join(', ')}); stop or terminate them first`);
      await rm(dir, { recursive: true, force: true });
      log.info({ imageId }, 'image deleted');
    },

    machineOf: (id) => (machines.get(id)?.running() ? machines.get(id) : undefined),

    async shutdown() {
      await group.cleanupAll();
      machines.clear();
    },
  };
  return provider;
}
