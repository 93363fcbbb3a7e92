// Fleet config versions in the bucket: signed, versioned documents on a real S3 endpoint (s3rver on
// loopback), read back only when the signature, the digest and the key they sit under all agree.
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  configChanges,
  configHistory,
  createConfigStore,
  createS3Client,
  latestConfig,
  publishConfig,
  readConfig,
  signBytes,
  type ConfigStore,
  type KilnError,
} from '@kiln/shared';
import { makeKeys, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let client: S3Client;
let store: ConfigStore;
let keys: Keys;
const PREFIX = 'team/';

/** The code of the KilnError `p` fails with. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  const err = (await p.then(() => undefined, (e: unknown) => e)) as KilnError | undefined;
  if (!err) throw new Error('expected a failure');
  return err.code;
}

const putRaw = (key: string, body: Buffer | string) => client.send(new PutObjectCommand({ Bucket: s3.s3.location.bucket, Key: `${PREFIX}${key}`, Body: body }));

beforeAll(async () => {
  s3 = await startS3();
  client = createS3Client(s3.s3.location);
  store = createConfigStore(client, s3.s3.location.bucket, PREFIX);
  keys = makeKeys();
});

afterAll(() => s3.close());

type Change = { set?: Record<string, string>; secrets?: Record<string, string>; unset?: string[] };

const publish = (fleet: string, change: Change, app = 'shop') =>
  publishConfig({ store, app, fleet, ...change, key: keys.key, keys: keys.keys, now: () => new Date('2026-11-22T03:00:00.000Z') });

describe('fleet config store', () => {
  it('publishes signed versions with a growing seq at config/APP/FLEET/SEQ.json and reads them back verified', async () => {
    expect(await latestConfig(store, 'shop', 'web', keys.keys)).toBeUndefined();
    const first = await publish('web', { set: { LOG_LEVEL: 'info', GREETING: 'hello\nworld' }, secrets: { DB_PASSWORD: 'aws-ssm:/shop/db-password' } });
    expect(first.config).toEqual({
      schema: 1,
      app: 'shop',
      fleet: 'web',
      seq: 1,
      values: { GREETING: 'hello\nworld', LOG_LEVEL: 'info' },
      secrets: { DB_PASSWORD: 'aws-ssm:/shop/db-password' },
      createdAt: '2026-11-22T03:00:00.000Z',
    });
    // A key moves between values and secrets; unset removes either kind.
    const second = await publish('web', { set: { DB_PASSWORD: 'not-secret-after-all' }, secrets: { LOG_LEVEL: 'env:LOG_LEVEL' }, unset: ['GREETING'] });
    expect(second.config.seq).toBe(2);
    expect(second.config.values).toEqual({ DB_PASSWORD: 'not-secret-after-all' });
    expect(second.config.secrets).toEqual({ LOG_LEVEL: 'env:LOG_LEVEL' });

    const objects = await listKeys();
    expect(objects).toEqual(['team/config/shop/web/0000000001.json', 'team/config/shop/web/0000000001.json.sig', 'team/config/shop/web/0000000002.json', 'team/config/shop/web/0000000002.json.sig']);

    const latest = await latestConfig(store, 'shop', 'web', keys.keys);
    expect(latest?.config).toEqual(second.config);
    expect(latest?.sha256).toBe(second.sha256);
    const read = await readConfig(store, 'shop', 'web', 1, keys.keys, { sha256: first.sha256 });
    expect(read.config).toEqual(first.config);
    expect(JSON.parse(read.sig.toString()).keyId).toBe(keys.key.keyId);

    const history = await configHistory(store, 'shop', 'web', keys.keys);
    expect(history.map((v) => v.config.seq)).toEqual([1, 2]);
    expect(configChanges(history[0]!.config, history[1]!.config)).toEqual({ set: ['DB_PASSWORD', 'LOG_LEVEL'], unset: ['GREETING'] });
    expect(configChanges(undefined, history[0]!.config)).toEqual({ set: ['DB_PASSWORD', 'GREETING', 'LOG_LEVEL'], unset: [] });
  });

  it('refuses a version whose seq would not grow (a replay), a key to unset that is not there, and a bad change', async () => {
    const one = await readConfig(store, 'shop', 'web', 1, keys.keys);
    // Seq 1 written again, as it was signed: the store refuses any seq at or below the latest.
    expect(await codeOf(store.putConfig('shop', 'web', 1, { bytes: one.bytes, sig: one.sig }))).toBe('KILN_CONFIG_STALE');
    expect(await codeOf(store.putConfig('shop', 'web', 2, { bytes: one.bytes, sig: one.sig }))).toBe('KILN_CONFIG_STALE');
    expect(await codeOf(publish('web', { unset: ['NOPE'] }))).toBe('KILN_CONFIG_KEY_UNKNOWN');
    expect(await codeOf(publish('fresh', { unset: ['NOPE'] }))).toBe('KILN_CONFIG_KEY_UNKNOWN');
    const bad: Change[] = [{}, { set: { 'BAD-KEY': 'x' } }, { set: { PORT: '1' } }, { set: { KILN_RELEASE_DIR: '/x' } }, { secrets: { A: 'hunter2' } }, { secrets: { A: 'file:relative' } }, { set: { A: 'x'.repeat(33 * 1024) } }, { set: { A: '1' }, unset: ['A'] }];
    for (const change of bad) {
      expect(await codeOf(publish('web', change)), JSON.stringify(change).slice(0, 80)).toBe('KILN_CONFIG_CHANGE_INVALID');
    }
    // Nothing of that was written.
    expect((await store.listSeqs('shop', 'web')).docs).toEqual([1, 2]);
  });

  it('never repeats a malformed secret reference in its error: it may be the secret itself', async () => {
    const err = await publish('web', { secrets: { DB_PASSWORD: 'hunter2-the-real-password' } }).catch((e: KilnError) => e);
    expect((err as KilnError).code).toBe('KILN_CONFIG_CHANGE_INVALID');
    expect((err as KilnError).message).toMatch(/secrets\.DB_PASSWORD: not a secret reference: use one of file:/);
    expect((err as KilnError).message).not.toContain('hunter2');
  });

  it('refuses a tampered document, an unknown signer and a digest other than the one asked for', async () => {
    await publish('tamper', { set: { A: '1' } });
    const v1 = await readConfig(store, 'shop', 'tamper', 1, keys.keys);
    await putRaw('config/shop/tamper/0000000001.json', v1.bytes.toString().replace('"1"', '"2"'));
    expect(await codeOf(readConfig(store, 'shop', 'tamper', 1, keys.keys))).toBe('KILN_SIGNATURE_INVALID');
    expect(await codeOf(latestConfig(store, 'shop', 'tamper', keys.keys))).toBe('KILN_SIGNATURE_INVALID');
    // Refused to publish on top of a latest version that does not verify.
    expect(await codeOf(publish('tamper', { set: { B: '1' } }))).toBe('KILN_SIGNATURE_INVALID');

    await publish('signer', { set: { A: '1' } });
    expect(await codeOf(readConfig(store, 'shop', 'signer', 1, makeKeys().keys))).toBe('KILN_SIGNATURE_UNKNOWN_KEY');
    expect(await codeOf(readConfig(store, 'shop', 'signer', 1, keys.keys, { sha256: '0'.repeat(64) }))).toBe('KILN_CONFIG_MISMATCH');
    expect(await codeOf(readConfig(store, 'shop', 'signer', 7, keys.keys))).toBe('KILN_CONFIG_NOT_FOUND');
  });

  it("refuses a document copied under another fleet's key, another app's or a higher seq: signed, but not for there", async () => {
    const a = await publish('fleet-a', { set: { DATABASE_URL: 'postgres://a' } });
    const { bytes, sig } = await readConfig(store, 'shop', 'fleet-a', 1, keys.keys);
    // fleet b: the exact signed bytes of fleet a's config
    await putRaw('config/shop/fleet-b/0000000001.json.sig', sig);
    await putRaw('config/shop/fleet-b/0000000001.json', bytes);
    const b = await readConfig(store, 'shop', 'fleet-b', 1, keys.keys).catch((e: KilnError) => e);
    expect((b as KilnError).code).toBe('KILN_CONFIG_MISMATCH');
    expect((b as KilnError).message).toMatch(/config shop\/fleet-b seq 1 is the document of shop\/fleet-a seq 1/);
    expect(await codeOf(latestConfig(store, 'shop', 'fleet-b', keys.keys))).toBe('KILN_CONFIG_MISMATCH');
    // Another app's fleet of the same name, and seq 1 replayed as seq 5 of fleet a.
    await putRaw('config/other/fleet-a/0000000001.json.sig', sig);
    await putRaw('config/other/fleet-a/0000000001.json', bytes);
    expect(await codeOf(readConfig(store, 'other', 'fleet-a', 1, keys.keys))).toBe('KILN_CONFIG_MISMATCH');
    await putRaw('config/shop/fleet-a/0000000005.json.sig', sig);
    await putRaw('config/shop/fleet-a/0000000005.json', bytes);
    expect(await codeOf(latestConfig(store, 'shop', 'fleet-a', keys.keys))).toBe('KILN_CONFIG_MISMATCH');
    // A signed document that does not parse as a config is the bucket's fault, said as such.
    const junk = Buffer.from('{"schema": 1}\n');
    await putRaw('config/shop/junk/0000000001.json.sig', signBytes(junk, keys.key));
    await putRaw('config/shop/junk/0000000001.json', junk);
    expect(await codeOf(readConfig(store, 'shop', 'junk', 1, keys.keys))).toBe('KILN_FLEET_CONFIG_INVALID');
    expect(a.config.seq).toBe(1);
  });

  it('takes the next seq above a signature left without its document (a publish that died half-way)', async () => {
    await publish('half', { set: { A: '1' } });
    await putRaw('config/shop/half/0000000002.json.sig', 'left over');
    const next = await publish('half', { set: { B: '2' } });
    expect(next.config.seq).toBe(3);
    expect((await configHistory(store, 'shop', 'half', keys.keys)).map((v) => v.config.seq)).toEqual([1, 3]);
  });

  it('checks names before they touch a key', async () => {
    expect(await codeOf(publish('../web', { set: { A: '1' } }))).toBe('KILN_NAME_INVALID');
    expect(await codeOf(latestConfig(store, 'Shop', 'web', keys.keys))).toBe('KILN_NAME_INVALID');
  });
});

async function listKeys(): Promise<string[]> {
  const res = await client.send(new ListObjectsV2Command({ Bucket: s3.s3.location.bucket, Prefix: `${PREFIX}config/shop/web/` }));
  return (res.Contents ?? []).map((o) => o.Key!).sort();
}
