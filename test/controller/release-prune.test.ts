// `kiln release prune APP`: the real `kiln` program against real S3 (s3rver on loopback), fleet records
// written by a real controller's registry, kept releases installed afterwards by the one install
// routine on fresh hosts, so a content object deleted by mistake fails an install here.
import { createHash, randomBytes } from 'node:crypto';
import { applyPrune, install, planPrune, promoteRelease, s3Objects, createDocStore, createS3Client, type ReleaseRef, type ManifestV2 } from '@kiln/shared';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kiln } from '../helpers/cli.js';
import { startController } from '../helpers/controller.js';
import { makeHost } from '../helpers/host.js';
import { makeKeys, pushApp, pushReleases, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let cwd: string;
let env: Record<string, string>;
let rel: Record<string, ReleaseRef>;

/** Objects in these tests are seconds old: no grace unless a test gives one. */
const prune = (...args: string[]) => kiln(['release', 'prune', ...args, ...(args.includes('--grace') ? [] : ['--grace', '0'])], { cwd, env });
const bucketKeys = async () => (await s3Objects(createS3Client(s3.s3.location), s3.s3.location.bucket).list('')).sort();
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const manifestOf = async (app: string, version: string) => JSON.parse((await s3.store.getManifest(app, version)).bytes.toString('utf8'));

// Large files (1 MiB and up) are objects of their own, named by their sha256: one only 2.0.0 has, one 3.0.0 and 8.0.0 share.
const big2 = randomBytes(1536 * 1024);
const big3 = randomBytes(1536 * 1024);
const shared = { 'shared.txt': 'a content 2.0.0 brought and every later release has\n' };

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  cwd = await tempDir('kiln-prune-');
  rel = await pushReleases({ store: s3.store, keys }, {
    '1.0.0': { app: 'shop', channel: 'stable' },
    '2.0.0': { app: 'shop', extra: { ...shared, 'big2.bin': big2 } },
    '3.0.0': { app: 'shop', extra: { ...shared, 'big3.bin': big3 } },
    '4.0.0': { app: 'shop', extra: shared },
    '5.0.0': { app: 'shop', extra: shared },
    '6.0.0': { app: 'shop', extra: shared, format: 1 },
    '7.0.0': { app: 'shop', extra: shared },
    '8.0.0': { app: 'shop', extra: { ...shared, 'big3.bin': big3 } },
  });
  // Fleets through the controller's own registry, then the controller stops: prune reads their records from the bucket.
  const ctl = await startController({ s3, keys });
  const fleets = ctl.server.kiln.fleets;
  const fleet = (name: string, app: string) => ({ name, app, channel: name, provider: 'none' as const, image: null, size: 0, targetGroup: null });
  await fleets.create(fleet('front', 'shop'), { ...rel['4.0.0']!, config: null });
  await fleets.update('front', (f) => ({ ...f, groups: [{ name: 'front-v001', image: 'img-5', release: { ...rel['5.0.0']!, config: null }, instances: [], state: 'standby', createdAt: new Date().toISOString() }] }));
  // a fleet moved from 1.0.0 to 7.0.0: `kiln rollback back` goes to 1.0.0
  await fleets.create(fleet('back', 'shop'), { ...rel['1.0.0']!, config: null });
  await fleets.setDesired('back', { ...rel['7.0.0']!, config: null });
  // another app's fleet that wants a "2.0.0" of its own: no reason to keep shop's
  await fleets.create(fleet('elsewhere', 'other'), { ...rel['2.0.0']!, config: null });
  await ctl.close();
  const loc = s3.s3.location;
  env = { KILN_BUCKET: loc.bucket, KILN_S3_ENDPOINT: loc.endpoint!, AWS_ACCESS_KEY_ID: loc.accessKeyId!, AWS_SECRET_ACCESS_KEY: loc.secretAccessKey!, AWS_REGION: loc.region ?? 'us-east-1' };
}, 60_000);

afterAll(async () => {
  await s3?.close();
});

describe('kiln release prune', () => {
  it('a dry run lists what would go, why, and deletes nothing', async () => {
    const before = await bucketKeys();
    const r = await prune('shop', '--keep', '2', '--dry-run');
    expect([r.code, r.stderr]).toEqual([0, '']);
    const row = (v: string) => r.stdout.split('\n').find((l) => l.startsWith(`${v} `)) ?? '';
    expect(row('1.0.0')).toMatch(/^1\.0\.0\s+1\s+keep\s+channel stable, fleet back rollback$/);
    expect(row('2.0.0')).toMatch(/^2\.0\.0\s+2\s+would remove\s+older than the newest 2/);
    expect(row('3.0.0')).toMatch(/would remove/);
    expect(row('4.0.0')).toMatch(/keep\s+fleet front desired$/);
    expect(row('5.0.0')).toMatch(/keep\s+fleet front image img-5 \(front-v001, standby\)$/);
    expect(row('6.0.0')).toMatch(/would remove/);
    expect(row('7.0.0')).toMatch(/keep\s+fleet back desired, newest 2$/);
    expect(row('8.0.0')).toMatch(/keep\s+newest 2$/);
    expect(r.stdout).toMatch(/^dry run: would remove 3 releases and \d+ content objects, [\d.]+ MiB; nothing deleted$/m);
    const json = await prune('shop', '--keep', '2', '--dry-run', '--json');
    expect(json.code).toBe(0);
    const plan = JSON.parse(json.stdout);
    expect(plan.remove.map((x: { version: string }) => x.version)).toEqual(['2.0.0', '3.0.0', '6.0.0']);
    expect(plan.objects.map((o: { name: string }) => o.name)).toContain(sha(big2));
    expect([plan.dryRun, plan.objectsHeld, plan.missing]).toEqual([true, null, []]);
    expect(await bucketKeys()).toEqual(before);
  });

  it('keeps the newest N, channels, fleets\' desired and image releases; removes the rest and the objects only they used', async () => {
    const all = ['1.0.0', '2.0.0', '3.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0'];
    const manifests = Object.fromEntries(await Promise.all(all.map(async (v) => [v, (await manifestOf('shop', v)) as ManifestV2] as const)));
    const named = (versions: string[]) => new Set(versions.flatMap((v) => manifests[v]!.content.objects.map((o) => o.name)));
    const kept = named(['1.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0']);
    const gone = [...named(['2.0.0', '3.0.0'])].filter((o) => !kept.has(o));
    // what the story needs: 2.0.0's big file goes; the pack 2.0.0 put shared.txt in and 3.0.0's big file stay (later releases name them)
    const sharedPack = manifests['2.0.0']!.content.objects[manifests['2.0.0']!.content.blobs[sha(shared['shared.txt'])]!.object]!.name;
    expect(gone).toContain(sha(big2));
    expect([...kept]).toEqual(expect.arrayContaining([sharedPack, sha(big3)]));

    const r = await prune('shop', '--keep', '2');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^2\.0\.0\s+2\s+remove\s+/m);
    expect(r.stdout).toMatch(new RegExp(`^removed 3 releases and ${gone.length} content objects: [\\d.]+ MiB freed$`, 'm'));
    // progress goes to stderr: a phase line in a pipe (a redrawn count on a terminal)
    expect(r.stderr).toMatch(new RegExp(`^removing 3 releases and ${gone.length} content objects, [\\d.]+ MiB\n$`));

    expect((await s3.store.listVersions('shop')).sort()).toEqual(['1.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0']);
    const keys_ = await bucketKeys();
    // every file of a removed release is gone, the format 1 artifact with it
    for (const v of ['2.0.0', '3.0.0', '6.0.0']) expect(keys_.filter((k) => k.startsWith(`releases/shop/${v}/`)), v).toEqual([]);
    expect(await s3.store.objectExists(s3.store.artifactKey('shop', '6.0.0'))).toBe(false);
    expect((await s3.store.listObjects('shop')).map((o) => o.name).sort()).toEqual([...kept].sort());

    // every kept release still installs on a host that has nothing yet
    const hosts = await Promise.all(['1.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0'].map(() => makeHost({ store: s3.store, keys, app: 'shop' })));
    try {
      const results = await Promise.all(['1.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0'].map((version, i) => install({ ...hosts[i]!.opts(), target: { version } })));
      expect(results.map((x) => [x.version, x.outcome])).toEqual(['1.0.0', '4.0.0', '5.0.0', '7.0.0', '8.0.0'].map((v) => [v, 'installed']));
      expect(await hosts[4]!.serving()).toContain('8.0.0');
    } finally {
      await Promise.all(hosts.map((h) => h.stop()));
    }

    // once more: nothing left to prune
    const again = await prune('shop', '--keep', '2');
    expect([again.code, again.stdout.trim().split('\n').at(-1)]).toEqual([0, 'nothing to prune: 5 releases of shop kept']);
  }, 60_000);

  it('refuses to run, deleting nothing, when a channel pointer does not parse (KILN_POINTER_INVALID)', async () => {
    await pushReleases({ store: s3.store, keys }, { '1.0.0': { app: 'bent' }, '2.0.0': { app: 'bent' } });
    await s3.store.putPointer('bent', 'beta', { bytes: Buffer.from('{"schema": 1, "app": "bent"'), sig: Buffer.from('{}') });
    const before = await bucketKeys();
    const r = await prune('bent', '--keep', '1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error KILN_POINTER_INVALID: the channel pointer bent\/beta is not JSON: .*prune cannot tell which release it names, and deletes nothing; .*kiln release promote bent VERSION --channel beta/m);
    expect(await bucketKeys()).toEqual(before);
  });

  it('keeps a release whose manifest does not parse, says so, and then deletes no object at all', async () => {
    await pushReleases({ store: s3.store, keys }, { '1.0.0': { app: 'odd', extra: { 'a.txt': 'only in 1.0.0\n' } }, '2.0.0': { app: 'odd' } });
    // a manifest from a later kiln, say: it may name any object
    await s3.store.putManifest('odd', '3.0.0', { bytes: Buffer.from('{"schema": 3, "seq": 3}\n'), sig: Buffer.from('{}') });
    const plan = await planPrune(s3.store, 'odd', { keep: 1, graceMs: 0 });
    expect(plan.keep.map((k) => [k.version, k.why])).toEqual([
      ['2.0.0', ['newest 1']],
      ['3.0.0', ['its manifest does not parse: kept, prune never deletes what it cannot read']],
    ]);
    expect(plan.remove.map((x) => x.version)).toEqual(['1.0.0']);
    expect([plan.objects, plan.objectsHeld]).toEqual([[], 'the manifest of 3.0.0 cannot be read, so which objects it needs is unknown']);
    const objects = await s3.store.listObjects('odd');
    const r = await prune('odd', '--keep', '1');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('no content object is deleted: the manifest of 3.0.0 cannot be read');
    expect(r.stdout).toMatch(/^3\.0\.0\s+-\s+keep\s+its manifest does not parse/m);
    expect((await s3.store.listVersions('odd')).sort()).toEqual(['2.0.0', '3.0.0']);
    expect(await s3.store.listObjects('odd')).toEqual(objects);
  });

  it('a promote or a push that finishes between plan and apply keeps what it needs', async () => {
    const [bigA, bigB] = [randomBytes(1100 * 1024), randomBytes(1100 * 1024)];
    await pushReleases({ store: s3.store, keys }, { '1.0.0': { app: 'late', extra: { 'a.bin': bigA } }, '2.0.0': { app: 'late', extra: { 'b.bin': bigB } }, '3.0.0': { app: 'late' } });
    const plan = await planPrune(s3.store, 'late', { keep: 1, graceMs: 0 });
    expect(plan.remove.map((x) => x.version)).toEqual(['1.0.0', '2.0.0']);
    expect(plan.objects.map((o) => o.name)).toEqual(expect.arrayContaining([sha(bigA), sha(bigB)]));
    // meanwhile: 1.0.0 is promoted, and 4.0.0 is pushed reusing 2.0.0's big file
    await promoteRelease({ store: s3.store, app: 'late', version: '1.0.0', channel: 'hot', key: keys.key, keys: keys.keys, ttlMs: 3_600_000 });
    await pushApp({ store: s3.store, keys, app: 'late', version: '4.0.0', extra: { 'b.bin': bigB } });
    const result = await applyPrune(s3.store, 'late', plan);
    expect([result.releases, result.spared]).toEqual([['2.0.0'], { releases: ['1.0.0'], objects: 2 }]);
    expect(result.objects).toBe(plan.objects.length - 2);
    expect(await Promise.all([bigA, bigB].map((b) => s3.store.objectExists(s3.store.objectKey('late', sha(b)))))).toEqual([true, true]);
    const host = await makeHost({ store: s3.store, keys, app: 'late' });
    try {
      expect((await install({ ...host.opts(), target: { version: '4.0.0' } })).outcome).toBe('installed');
    } finally {
      await host.stop();
    }
  });

  it('keeps content objects younger than the grace period (a push may be under way) and prunes them once they are older', async () => {
    await pushReleases({ store: s3.store, keys }, { '1.0.0': { app: 'young', extra: { 'a.bin': randomBytes(1536 * 1024) } }, '2.0.0': { app: 'young' } });
    const objects = await s3.store.listObjects('young');
    expect(objects.every((o) => typeof o.modifiedAt === 'number')).toBe(true);
    const now = await planPrune(s3.store, 'young', { keep: 1, graceMs: 0 });
    expect(now.objects.length).toBe(1); // a.bin, stored alone (its pack is shared with 2.0.0)
    expect((await planPrune(s3.store, 'young', { keep: 1 })).objects).toEqual([]);
    expect((await planPrune(s3.store, 'young', { keep: 1, now: () => Date.now() + 2 * 3_600_000 })).objects).toEqual(now.objects);
    const r = await prune('young', '--keep', '1', '--grace', '1h');
    expect(r.code).toBe(0);
    expect((await s3.store.listObjects('young')).length).toBe(objects.length);
  });

  it('--keep 0 is a usage error: the newest release is always kept', async () => {
    const r = await prune('shop', '--keep', '0');
    expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(/^error KILN_USAGE: --keep 0: a whole number from 1 to/)]);
  });

  it('refuses to run when a fleet record does not parse (KILN_STATE_INVALID): what that fleet needs is unknown', async () => {
    const docs = createDocStore(createS3Client(s3.s3.location), s3.s3.location.bucket);
    await docs.put('controller/fleets/torn.json', { name: 'torn', app: 'bent' });
    try {
      await pushApp({ store: s3.store, keys, app: 'torn', version: '1.0.0' });
      await pushApp({ store: s3.store, keys, app: 'torn', version: '2.0.0' });
      const r = await prune('torn', '--keep', '1');
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^error KILN_STATE_INVALID: the fleet record controller\/fleets\/torn\.json does not parse: prune cannot tell which releases that fleet needs, and deletes nothing/m);
      expect((await s3.store.listVersions('torn')).sort()).toEqual(['1.0.0', '2.0.0']);
    } finally {
      await docs.remove('controller/fleets/torn.json');
    }
  });
});
