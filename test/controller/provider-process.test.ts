// The process provider on its own: real directories, real agent processes, no controller needed
// (the agents run from the channel pointer alone, as the agent config allows).
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { until } from '../helpers/agent.js';
import { makeKeys, pushApp, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let dir: string;
let provider: Provider;

const boot = () => ({
  agent: { app: 'web', channel: 'stable', s3: s3.s3.location, keys: keys.keys.map((k) => k.key.export({ type: 'spki', format: 'pem' }).toString()), pollIntervalMs: 1_000 },
});
const root = (id: string) => path.join(dir, 'instances', id, 'root');
const serving = async (address: string) => (await fetch(address, { signal: AbortSignal.timeout(2_000) }).then((r) => r.text()).catch(() => undefined)) ?? '';

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-process-provider-');
  provider = createProcessProvider({ dir, log: quietLog() });
  await pushApp({ store: s3.store, keys, version: '1.0.0', channel: 'stable' });
}, 30_000);

afterAll(async () => {
  await provider?.terminate((await provider.describeInstances({})).map((i) => i.id));
  await s3?.close();
  await rm(dir, { recursive: true, force: true });
}, 30_000);

describe('process provider', () => {
  it('launches tagged instances from the base image whose agents install the channel and serve it', async () => {
    const base = await provider.defaultImage!();
    expect(base.id).toBe('img-base');
    const insts = await provider.launch({ imageId: base.id, count: 2, tags: { 'kiln:fleet': 'a', 'kiln:group': 'a-v001' }, boot: boot() });
    expect(insts.map((i) => i.state)).toEqual(['running', 'running']);
    await provider.waitRunning(insts.map((i) => i.id), { timeoutMs: 5_000 });
    for (const i of insts) await until(`${i.id} serving`, async () => (await serving(i.address!)).includes('1.0.0'));
    const config = JSON.parse(await readFile(path.join(root(insts[0]!.id), 'etc/kiln/agent.json'), 'utf8'));
    expect(config).toMatchObject({ instanceId: insts[0]!.id, imageId: 'img-base', app: 'web' });
    expect((await stat(path.join(root(insts[0]!.id), 'etc/kiln/agent.json'))).mode & 0o777).toBe(0o600);
    expect((await provider.describeInstances({ 'kiln:fleet': 'a' })).map((i) => i.id).sort()).toEqual(insts.map((i) => i.id).sort());
    expect(await provider.describeInstances({ 'kiln:fleet': 'b' })).toEqual([]);
  }, 30_000);

  it('stops (app and agent gone, disk kept), starts again on the same port, and images a stopped instance without its config', async () => {
    const [i] = await provider.describeInstances({ 'kiln:fleet': 'a' });
    await provider.stop([i!.id], { timeoutMs: 15_000 });
    expect((await provider.describeInstances({ 'kiln:fleet': 'a' })).find((x) => x.id === i!.id)!.state).toBe('stopped');
    expect(await serving(i!.address!)).toBe('');
    await provider.start([i!.id], { timeoutMs: 10_000 });
    await until('serving again', async () => (await serving(i!.address!)).includes('1.0.0'));

    const image = await provider.createImage(i!.id, { name: 'web-1', tags: { 'kiln:app': 'web', 'kiln:version': '1.0.0' } }, { timeoutMs: 30_000 });
    expect(image.state).toBe('available');
    const imageRoot = path.join(dir, 'images', image.id, 'root');
    await expect(stat(path.join(imageRoot, 'etc/kiln/agent.json'))).rejects.toThrow(/ENOENT/);
    expect(await readdir(path.join(imageRoot, 'var/lib/kiln/apps/web/releases'))).toContain('1.0.0');
    expect((await provider.describeImages({ tags: { 'kiln:version': '1.0.0' } })).map((x) => x.id)).toEqual([image.id]);
    // Imaging stops a running instance first, as EC2 asks for.
    expect((await provider.describeInstances({ 'kiln:fleet': 'a' })).find((x) => x.id === i!.id)!.state).toBe('stopped');

    // An instance of that image starts from the copy, and writing to it leaves the image as it was.
    const [j] = await provider.launch({ imageId: image.id, count: 1, tags: { 'kiln:fleet': 'c' }, boot: boot() });
    await until('the image copy serving', async () => (await serving(j!.address!)).includes('1.0.0'));
    await writeFile(path.join(root(j!.id), 'scribble'), 'x');
    await expect(stat(path.join(imageRoot, 'scribble'))).rejects.toThrow(/ENOENT/);
    await provider.deleteImage(image.id);
    expect(await provider.describeImages({ ids: [image.id] })).toEqual([]);
  }, 60_000);

  it('describes an instance whose agent died as stopped, terminates (directory gone), and tolerates unknown ids', async () => {
    const [i] = await provider.describeInstances({ 'kiln:fleet': 'c' });
    const rec = JSON.parse(await readFile(path.join(dir, 'instances', i!.id, 'instance.json'), 'utf8'));
    process.kill(rec.pid, 'SIGKILL');
    await until('described as stopped', async () => (await provider.describeInstances({ 'kiln:fleet': 'c' }))[0]?.state === 'stopped');
    await provider.terminate([i!.id, 'i-00000000']);
    await expect(stat(path.join(dir, 'instances', i!.id))).rejects.toThrow(/ENOENT/);
    expect(await provider.describeInstances({ 'kiln:fleet': 'c' })).toEqual([]);
  }, 30_000);

  it('refuses what does not exist or cannot be, with its code, and leaves nothing behind', async () => {
    const before = await readdir(path.join(dir, 'instances'));
    await expect(provider.launch({ imageId: 'img-nothere', count: 1, tags: {}, boot: boot() })).rejects.toMatchObject({ code: 'KILN_IMAGE_NOT_FOUND' });
    await expect(provider.launch({ imageId: '../../etc', count: 1, tags: {}, boot: boot() })).rejects.toMatchObject({ code: 'KILN_IMAGE_NOT_FOUND' });
    await expect(provider.stop(['i-nothere0'], { timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'KILN_INSTANCE_NOT_FOUND' });
    await expect(provider.createImage('../x', { name: 'x', tags: {} }, { timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'KILN_INSTANCE_NOT_FOUND' });
    await expect(provider.copyImage('img-base', ['eu-west-1'], { timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'KILN_PROVIDER_FAILED' });
    expect(await provider.copyImage('img-base', [], { timeoutMs: 1_000 })).toEqual([]);
    await expect(provider.waitRunning(['i-nothere0'], { timeoutMs: 100 })).rejects.toMatchObject({ code: 'KILN_INSTANCE_NOT_FOUND' });
    expect(await readdir(path.join(dir, 'instances'))).toEqual(before);
  });

  it('a wait past its deadline is KILN_PROVIDER_TIMEOUT naming the instance and its state', async () => {
    const [i] = await provider.describeInstances({ 'kiln:fleet': 'a' });
    await provider.stop([i!.id], { timeoutMs: 15_000 });
    const t = Date.now();
    const err = await provider.waitRunning([i!.id], { timeoutMs: 300 }).catch((e) => e);
    expect(err.code).toBe('KILN_PROVIDER_TIMEOUT');
    expect(err.message).toContain(`${i!.id} (stopped)`);
    expect(Date.now() - t).toBeLessThan(2_000);
  }, 30_000);

  it('a corrupt record file escaped as a bare SyntaxError: it is KILN_STATE_INVALID naming the file', async () => {
    const own = await tempDir('kiln-process-corrupt-');
    try {
      await mkdir(path.join(own, 'instances', 'i-corrupt'), { recursive: true });
      await writeFile(path.join(own, 'instances', 'i-corrupt', 'instance.json'), '{"id": "i-corr');
      const corrupt = createProcessProvider({ dir: own, log: quietLog() });
      const err = await corrupt.describeInstances({}).catch((e) => e);
      expect(err).toMatchObject({ code: 'KILN_STATE_INVALID' });
      expect(err.message).toContain(path.join(own, 'instances', 'i-corrupt', 'instance.json'));
    } finally {
      await rm(own, { recursive: true, force: true });
    }
  });
});
