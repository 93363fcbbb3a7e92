// A fleet's config from the CLI and the API (`kiln config set`, `unset`, `show`, `history`): runCli,
// the same code as the `kiln` binary, against a real controller on real S3. Secrets go in as
// references only; a host resolves them from the signed version in the bucket. The secret's value
// must show nowhere on the way: not in an answer, an output, the controller's log or the bucket.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildServer } from '@kiln/controller';
import { createConfigStore, createS3Client, latestConfig, resolveSecrets } from '@kiln/shared';
import { operatorSession } from '../helpers/cli.js';
import { OPERATOR, startController, type TestController } from '../helpers/controller.js';
import { keptLog, makeKeys, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { bucketFiles, startS3, type S3Fixture } from '../helpers/s3.js';

/** The secrets' values: on the host only. */
const DB_PASSWORD = 'db-pa55-7c1e0f-only-on-the-host';
const API_TOKEN = 'tok-93ab-only-in-the-agents-env';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let cwd: string;
let host: string;
const log = keptLog();
/** Everything the CLI printed and the API answered is kept in `seen`, searched for the values at the end. */
const { kiln, api, seen } = operatorSession(() => ctl, () => cwd);

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  cwd = await tempDir('kiln-config-cwd-');
  host = await tempDir('kiln-config-host-');
  ctl = await startController({ s3, keys, log: log.log });
  const created = await ctl.api('POST', '/v1/fleets', { name: 'web', app: 'shop' });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
}, 60_000);

afterAll(async () => {
  await ctl?.close();
  await s3?.close();
  await rm(host, { recursive: true, force: true });
}, 60_000);

describe('kiln config', { timeout: 60_000 }, () => {
  it('a fleet without config: show is KILN_CONFIG_NOT_FOUND, history is empty', async () => {
    const shown = await kiln('config', 'show', 'web');
    expect(shown.code).toBe(1);
    expect(shown.stderr).toMatch(/^error KILN_CONFIG_NOT_FOUND: fleet web has no config yet: `kiln config set web KEY=VALUE` publishes its first version/);
    expect((await api('GET', '/v1/fleets/web/config')).status).toBe(404);
    const history = await kiln('config', 'history', 'web');
    expect([history.code, history.stdout]).toEqual([0, 'fleet web has no config yet: `kiln config set web KEY=VALUE` publishes its first version\n']);
    const none = await api('GET', '/v1/fleets/nope/config');
    expect([none.status, none.body.error.code]).toEqual([404, 'KILN_FLEET_NOT_FOUND']);
  });

  it('config set publishes values, then secrets by reference, each a new signed version, and says how it takes effect', async () => {
    const set = await kiln('config', 'set', 'web', 'LOG_LEVEL=debug', 'GREETING=hello world', 'EMPTY=');
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/^config of fleet web \(app shop\): seq 1, sha256 [0-9a-f]{64}, created /);
    expect(set.stdout).toContain('set      LOG_LEVEL, GREETING, EMPTY');
    expect(set.stdout).toContain('takes effect with `kiln deploy web --config`');

    const secret = await kiln('config', 'set', 'web', '--secret', 'DB_PASSWORD=file:/etc/shop/db-password', '--secret', 'API_TOKEN=env:SHOP_API_TOKEN', '--json');
    expect(secret.code, secret.stderr).toBe(0);
    const v2 = JSON.parse(secret.stdout);
    expect(v2).toMatchObject({ app: 'shop', fleet: 'web', seq: 2, values: { EMPTY: '', GREETING: 'hello world', LOG_LEVEL: 'debug' }, secrets: { API_TOKEN: 'env:SHOP_API_TOKEN', DB_PASSWORD: 'file:/etc/shop/db-password' } });

    const shown = await kiln('config', 'show', 'web');
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain(`seq 2, sha256 ${v2.sha256}`);
    expect(shown.stdout).toMatch(/^KEY +VALUE \/ REF +KIND$/m);
    expect(shown.stdout).toMatch(/^DB_PASSWORD +file:\/etc\/shop\/db-password +secret$/m);
    expect(shown.stdout).toMatch(/^GREETING +hello world +value$/m);
    expect((await api('GET', '/v1/fleets/web/config')).body.config).toEqual(v2);
  });

  it('a host resolves the signed version it reads from the bucket: the values exist there and nowhere else', async () => {
    await mkdir(path.join(host, 'etc/shop'), { recursive: true });
    await writeFile(path.join(host, 'etc/shop/db-password'), `${DB_PASSWORD}\n`, { mode: 0o600 });
    const latest = await latestConfig(createConfigStore(createS3Client(s3.s3.location), s3.s3.location.bucket), 'shop', 'web', keys.keys);
    expect(latest?.config.seq).toBe(2);
    expect(await resolveSecrets(latest!.config.secrets, { root: host, env: { SHOP_API_TOKEN: API_TOKEN } })).toEqual({ DB_PASSWORD, API_TOKEN });
  });

  it('a plain value under a secret-like name gets a warning; setting it moves the key out of the secrets', async () => {
    const plain = await kiln('config', 'set', 'web', 'DB_PASSWORD=placeholder');
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stderr).toMatch(/^warning: DB_PASSWORD looks like a secret, set as a plain value \(kept in the bucket as it is\); a secret goes by reference: --secret KEY=REF/);
    const back = await kiln('config', 'set', 'web', '--secret', 'DB_PASSWORD=file:/etc/shop/db-password', '--json');
    const v4 = JSON.parse(back.stdout);
    expect(v4.seq).toBe(4);
    expect(v4.values.DB_PASSWORD).toBeUndefined();
    expect(v4.secrets.DB_PASSWORD).toBe('file:/etc/shop/db-password');
  });

  it('config unset removes keys; one the config does not have is refused and publishes nothing', async () => {
    const unset = await kiln('config', 'unset', 'web', 'GREETING', 'API_TOKEN');
    expect(unset.code, unset.stderr).toBe(0);
    expect(unset.stdout).toMatch(/seq 5/);
    expect(unset.stdout).toContain('unset    GREETING, API_TOKEN');
    expect(unset.stdout).toContain('kiln deploy web --config');
    const unknown = await kiln('config', 'unset', 'web', 'NOPE');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error KILN_CONFIG_KEY_UNKNOWN: fleet web has no config key NOPE to unset \(its keys: DB_PASSWORD, EMPTY, LOG_LEVEL\)/);
    expect((await api('GET', '/v1/fleets/web/config')).body.config.seq).toBe(5);
  });

  it('config history lists every version and the keys it set and unset', async () => {
    const versions = JSON.parse((await kiln('config', 'history', 'web', '--json')).stdout);
    expect(versions.map((v: any) => [v.seq, v.set, v.unset])).toEqual([
      [1, ['EMPTY', 'GREETING', 'LOG_LEVEL'], []],
      [2, ['API_TOKEN', 'DB_PASSWORD'], []],
      [3, ['DB_PASSWORD'], []],
      [4, ['DB_PASSWORD'], []],
      [5, [], ['API_TOKEN', 'GREETING']],
    ]);
    const table = await kiln('config', 'history', 'web');
    expect(table.stdout).toMatch(/^SEQ +CREATED +SHA256 +SET +UNSET$/m);
    expect(table.stdout).toMatch(/^5 +\S+ +[0-9a-f]{12} +- +API_TOKEN, GREETING$/m);
    expect(table.stdout).toContain('kiln deploy web --config');
    expect((await api('GET', '/v1/fleets/web/config/history')).body.versions).toEqual(versions);
  });

  it('bad input is a 400 with a stable code naming the field, and never repeats a value given as a reference', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{}, /name at least one key to set, point at a secret or unset/],
      [{ set: {} }, /name at least one key/],
      [{ set: { 'BAD-KEY': 'x' } }, /set\.BAD-KEY: a key is an environment variable name/],
      [{ set: { PORT: '8080' } }, /set\.PORT: kiln sets PORT itself/],
      [{ unset: ['KILN_RELEASE_DIR'] }, /unset\.0: kiln sets KILN_\* variables itself/],
      [{ secrets: { DB_PASSWORD: DB_PASSWORD } }, /secrets\.DB_PASSWORD: not a secret reference: use one of file:\/ABSOLUTE\/PATH/],
      [{ secrets: { DB_PASSWORD: 'aws-ssm:no spaces allowed' } }, /secrets\.DB_PASSWORD: a malformed aws-ssm: reference/],
      [{ set: { A: 1 } }, /set\.A: /],
      [{ set: { A: 'x' }, other: true }, /Unrecognized key/],
      [{ set: { A: 'x' }, unset: ['A'] }, /A: a key is named twice/],
    ];
    for (const [body, message] of cases) {
      const res = await api('POST', '/v1/fleets/web/config', body);
      expect([res.status, res.body.error.code], JSON.stringify(body)).toEqual([400, 'KILN_REQUEST_INVALID']);
      expect(res.body.error.message, JSON.stringify(body)).toMatch(message);
    }
    const typo = await kiln('config', 'set', 'web', '--secret', `DB_PASSWORD=${DB_PASSWORD}`);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toMatch(/^error KILN_REQUEST_INVALID: the config change is invalid: secrets\.DB_PASSWORD: not a secret reference/);
    const noPair = await kiln('config', 'set', 'web', 'LOG_LEVEL=info', DB_PASSWORD);
    expect([noPair.code, noPair.stderr.split('\n')[0]]).toEqual([2, 'error KILN_USAGE: argument 2 is not KEY=VALUE']);
    const noRef = await kiln('config', 'set', 'web', '--secret', DB_PASSWORD);
    expect([noRef.code, noRef.stderr.split('\n')[0]]).toEqual([2, 'error KILN_USAGE: --secret 1 is not KEY=REF (a secret is set by reference, never by its value)']);
    expect((await kiln('config', 'set', 'web')).stderr).toMatch(/^error KILN_USAGE: config set needs at least one KEY=VALUE or --secret KEY=REF/);
    expect((await api('GET', '/v1/fleets/web/config')).body.config.seq).toBe(5);
  });

  it('a controller without a signing key refuses to publish (503) but shows the config', async () => {
    const server = await buildServer({ log: quietLog(), s3: createS3Client(s3.s3.location), bucket: s3.s3.location.bucket, operatorTokens: [OPERATOR], trustedKeys: keys.keys });
    try {
      const auth = { authorization: `Bearer ${OPERATOR}` };
      const post = await server.inject({ method: 'POST', url: '/v1/fleets/web/config', headers: auth, payload: { set: { A: '1' } } });
      expect([post.statusCode, post.json().error.code]).toEqual([503, 'KILN_KEY_INVALID']);
      const get = await server.inject({ method: 'GET', url: '/v1/fleets/web/config', headers: auth });
      expect([get.statusCode, get.json().config.seq]).toEqual([200, 5]);
    } finally {
      await server.close();
    }
  });

  it("the secrets' values are nowhere: not in an answer, an output, the controller's log or the bucket", async () => {
    expect(log.text()).toContain('config published');
    const bucket = await bucketFiles(s3);
    expect(bucket.some((f) => f.includes('file:/etc/shop/db-password'))).toBe(true);
    for (const value of [DB_PASSWORD, API_TOKEN]) {
      expect(seen.filter((s) => s.includes(value)).length, `${value} in an output or answer`).toBe(0);
      expect(log.text().includes(value), `${value} in the controller's log`).toBe(false);
      expect(bucket.filter((f) => f.includes(value)).length, `${value} in the bucket`).toBe(0);
    }
  });
});
