// Changing and removing fleets from the CLI (`kiln fleet show`, `update`, `delete`), and instance
// records that go with their instance: runCli, the same code as the `kiln` binary, against a real
// controller on the process provider, real S3, real agents and apps.
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, runCli, type Provider } from '@kiln/controller';
import { createDocStore, createS3Client } from '@kiln/shared';
import { OPERATOR, closeProcessStack, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { gatedSpec, makeKeys, pushApp, pushReleases, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { until } from '../helpers/agent.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let dir: string;
let cwd: string;
const gate = () => path.join(cwd, 'gate');

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-fleet-manage-');
  cwd = await tempDir('kiln-fleet-manage-cwd-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({
    s3,
    keys,
    launch: testLaunch(provider, s3),
  });
  await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': {}, '3.0.0': {} });
  await pushApp({ store: s3.store, keys, version: '4.0.0', kilnJson: gatedSpec(gate()) });
}, 60_000);

afterAll(() => closeProcessStack({ ctl, provider, s3, dir }), 60_000);

/** One kiln command against the test controller, as the binary runs it. */
async function kiln(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (add: (d: string) => void) => new Writable({ write: (d, _e, cb) => (add(String(d)), cb()) });
  const io = { stdout: sink((d) => (stdout += d)), stderr: sink((d) => (stderr += d)), env: { KILN_CONTROLLER: ctl.url, KILN_TOKEN: OPERATOR }, cwd };
  const code = await runCli(args, { io, log: quietLog() });
  return { code, stdout, stderr };
}

async function json(...args: string[]): Promise<any> {
  const r = await kiln(...args, '--json');
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

async function deployed(...args: string[]): Promise<any> {
  const d = await json('deploy', ...args, '--health-timeout', '20s');
  expect(d.state, JSON.stringify(d)).toBe('succeeded');
  return d;
}

const instanceDir = (id: string) => path.join(dir, 'instances', id);
const exists = (p: string) => stat(p).then(() => true, () => false);

describe('kiln fleet show, update and delete', { timeout: 120_000 }, () => {
  let baked: string;
  let firstGroup: string[];

  it('kiln fleet show did not exist: it shows app, channel, provider, size, image, groups, desired release and the last deployments', async () => {
    expect((await kiln('fleet', 'create', 'web', '--app', 'web', '--channel', 'stable', '--provider', 'process', '--size', '1')).code).toBe(0);
    const d = await deployed('web', '1.0.0', '--strategy', 'bake');
    baked = d.image;
    const shown = await kiln('fleet', 'show', 'web');
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/^fleet\s+web$/m);
    expect(shown.stdout).toMatch(/^app\s+web$/m);
    expect(shown.stdout).toMatch(/^channel\s+stable$/m);
    expect(shown.stdout).toMatch(/^provider\s+process$/m);
    expect(shown.stdout).toMatch(new RegExp(`^image\\s+${baked}$`, 'm'));
    expect(shown.stdout).toMatch(/^size\s+1$/m);
    expect(shown.stdout).toMatch(/^desired\s+1\.0\.0 \(seq \d+\)$/m);
    expect(shown.stdout).toMatch(new RegExp(`^web-v001\\s+live\\s+${baked}\\s+1\\.0\\.0\\s+i-`, 'm'));
    expect(shown.stdout).toMatch(new RegExp(`^${d.id}\\s+deploy\\s+bake\\s+1\\.0\\.0\\s+succeeded`, 'm'));
    const j = await json('fleet', 'show', 'web');
    expect(j.fleet).toMatchObject({ name: 'web', app: 'web', channel: 'stable', provider: 'process', size: 1, image: baked, desired: { version: '1.0.0' } });
    expect(j.fleet.groups.map((g: any) => [g.name, g.state])).toEqual([['web-v001', 'live']]);
    expect(j.deployments.map((x: any) => x.id)).toEqual([d.id]);
    firstGroup = j.fleet.groups[0].instances;
    // the builder's agent key stays with the builder: the image holds none, its instances make their own
    expect(await exists(path.join(dir, 'images', baked, 'root/var/lib/kiln/agent/identity.key'))).toBe(false);
    expect(await exists(path.join(instanceDir(firstGroup[0]!), 'root/var/lib/kiln/agent/identity.key'))).toBe(true);
    expect((await kiln('fleet', 'show', 'nope')).stderr).toMatch(/^error KILN_FLEET_NOT_FOUND: /);
    // the provider's instances of a fleet that does not exist: the API says so (was an empty list)
    const none = await ctl.api('GET', '/v1/instances?fleet=nope');
    expect([none.status, none.body.error?.code]).toEqual([404, 'KILN_FLEET_NOT_FOUND']);
    expect((await ctl.api('GET', '/v1/instances?fleet=web')).body.instances.map((i: any) => i.id).sort()).toEqual([...firstGroup].sort());
  });

  it('a terminated instance kept its record in the controller: it goes with its instance, and its provider record with it', async () => {
    const [id] = firstGroup;
    await until(`${id} reported`, () => ctl.server.kiln.hub.get(id!)?.report != null);
    await deployed('web', '2.0.0', '--strategy', 'relaunch');
    expect(await exists(instanceDir(id!))).toBe(true); // stopped, kept for rollback
    await deployed('web', '3.0.0', '--strategy', 'relaunch');
    // web-v001 was the standby before the standby: terminated, and nothing of it is left.
    expect(await exists(instanceDir(id!))).toBe(false);
    expect(ctl.server.kiln.hub.get(id!)).toBeUndefined();
    expect((await json('fleet', 'show', 'web')).fleet.groups.map((g: any) => [g.name, g.state])).toEqual([['web-v002', 'standby'], ['web-v003', 'live']]);
  });

  it('nothing about a fleet could be changed: kiln fleet update checks each change and writes it to the record', async () => {
    const refusals: Array<[string[], number, RegExp]> = [
      [['fleet', 'update', 'web'], 2, /^error KILN_USAGE: fleet update needs at least one of/],
      [['fleet', 'update', 'web', '--size', 'many'], 2, /^error KILN_USAGE: --size many/],
      [['fleet', 'update', 'web', '--target-group', 'tg-1'], 2, /^error KILN_USAGE: --target-group tg-1/],
      [['fleet', 'update', 'web', '--image', 'img-nothere'], 1, /^error KILN_IMAGE_NOT_FOUND: /],
      [['fleet', 'update', 'web', '--target-group', 'arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123abcd'], 1, /^error KILN_REQUEST_INVALID: targetGroup: .*only ec2 fleets/],
      [['fleet', 'update', 'web', '--channel', 'not a channel'], 1, /^error KILN_REQUEST_INVALID: the fleet change is invalid: channel/],
      [['fleet', 'update', 'nope', '--size', '2'], 1, /^error KILN_FLEET_NOT_FOUND: /],
    ];
    for (const [args, code, message] of refusals) {
      const r = await kiln(...args);
      expect([r.code, r.stderr], args.join(' ')).toEqual([code, expect.stringMatching(message)]);
    }
    expect((await kiln('fleet', 'create', 'api', '--app', 'web', '--channel', 'beta')).code).toBe(0);
    const shared = await kiln('fleet', 'update', 'web', '--channel', 'beta');
    expect(shared.stderr).toMatch(/^error KILN_CHANNEL_TAKEN: channel: fleet api already follows web\/beta/);

    const updated = await kiln('fleet', 'update', 'web', '--size', '2', '--channel', 'canary', '--image', 'img-base');
    expect(updated.code, updated.stderr).toBe(0);
    expect(updated.stdout).toContain('fleet web updated:');
    expect(updated.stdout).toMatch(/size 1 -> 2: the next bake, relaunch or heal launches 2; the live group keeps the instances it has/);
    expect(updated.stdout).toMatch(/channel stable -> canary: deployments move web\/canary from now on/);
    expect(updated.stdout).toMatch(new RegExp(`image ${baked} -> img-base: the next relaunch launches from it`));
    expect((await json('fleet', 'show', 'web')).fleet).toMatchObject({ size: 2, channel: 'canary', image: 'img-base' });
    // Back as it was for what follows; the running group was not touched by any of it.
    const back = await json('fleet', 'update', 'web', '--size', '1', '--channel', 'stable', '--image', baked);
    expect(back).toMatchObject({ size: 1, channel: 'stable', image: baked });
    expect((await json('status', 'web')).summary).toMatchObject({ instances: 1, unreachable: 0 });
  });

  it('kiln fleet update and delete refuse while a deployment runs, with KILN_FLEET_BUSY and the command that cancels it', async () => {
    const held = await json('deploy', 'web', '4.0.0', '--batch', '100%', '--health-timeout', '30s', '--no-wait');
    expect(held.state).toBe('running');
    const [del, upd] = [await kiln('fleet', 'delete', 'web'), await kiln('fleet', 'update', 'web', '--size', '3')];
    for (const r of [del, upd]) {
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^error KILN_FLEET_BUSY: fleet web has a deployment running \\(${held.id}\\): .*\`kiln deployments cancel ${held.id}\``));
    }
    await writeFile(gate(), '');
    await until('the held deployment over', async () => (await json('deployments', 'show', held.id)).state !== 'running', 30_000);
    expect((await json('fleet', 'show', 'web')).fleet.size).toBe(1);
  });

  it('a fleet could not be removed: kiln fleet delete terminates its instances, deletes the images its bakes made, removes its records and its agents', async () => {
    const { fleet } = await json('fleet', 'show', 'web');
    const instances: string[] = fleet.groups.flatMap((g: any) => g.instances);
    expect(instances.length).toBe(2);
    // Two more images of the fleet's, one of which another fleet launches from: that one stays.
    const shared = await provider.createImage(instances[0]!, { name: 'shared', tags: { 'kiln:fleet': 'web' } }, { timeoutMs: 20_000 });
    expect((await kiln('fleet', 'create', 'other', '--app', 'other', '--provider', 'process', '--image', shared.id)).code).toBe(0);
    const own = await provider.createImage(instances[0]!, { name: 'own', tags: { 'kiln:fleet': 'web' } }, { timeoutMs: 20_000 });

    const del = await kiln('fleet', 'delete', 'web');
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout).toMatch(/^fleet web deleted$/m);
    expect(del.stdout).toMatch(new RegExp(`^instances terminated\\s+${[...instances].sort().join(' ')}$`, 'm'));
    expect(del.stdout).toMatch(/^deployment records\s+\d+ removed$/m);
    expect(del.stdout).toMatch(new RegExp(`^images kept\\s+${shared.id} \\(another fleet launches from them\\)$`, 'm'));
    expect(del.stdout).toMatch(/^images deleted\s+/m);
    for (const img of [baked, own.id]) expect(del.stdout).toMatch(new RegExp(`^images deleted\\s+.*${img}`, 'm'));

    for (const id of instances) {
      expect(await exists(instanceDir(id)), id).toBe(false);
      expect(ctl.server.kiln.hub.get(id), id).toBeUndefined();
    }
    expect((await provider.describeImages({ ids: [baked, own.id, shared.id] })).map((i) => i.id)).toEqual([shared.id]);
    expect((await kiln('fleet', 'show', 'web')).stderr).toMatch(/^error KILN_FLEET_NOT_FOUND: /);
    expect((await kiln('deployments', 'web')).stderr).toMatch(/^error KILN_FLEET_NOT_FOUND: /);
    expect(await exists(path.join(cwd, '.kiln/fleets/web.credential'))).toBe(false);
    // Its records are gone from the bucket, not only hidden by the API.
    const docs = createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket);
    expect([await docs.list('controller/deployments/web/'), await docs.list('controller/fleets/web.json')]).toEqual([[], []]);
    // and so are its instances' pinned keys (written after the delete answers)
    await until('the instance records of web gone from the bucket', async () => (await docs.list('controller/instances/web.json')).length === 0);

    // A fleet of the same name starts empty: nothing of the old one shows.
    expect((await kiln('fleet', 'create', 'web', '--app', 'web', '--provider', 'process', '--size', '1')).code).toBe(0);
    const fresh = await json('fleet', 'show', 'web');
    expect([fresh.fleet.groups, fresh.deployments]).toEqual([[], []]);
    expect((await json('status', 'web')).instances).toEqual([]);

    const kept = await json('fleet', 'delete', 'other', '--keep-images');
    expect(kept).toMatchObject({ fleet: 'other', terminated: [], imagesDeleted: [] });
    expect((await provider.describeImages({ ids: [shared.id] })).length).toBe(1);
  });
});
