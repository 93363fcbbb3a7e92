// The channel pointer binds a fleet config version to its release: a booting or polling agent gets
// both from one signed object, reads the config the pointer names and checks it is that one (its
// digest, its app, its fleet) before the app runs with it. Real agent, real S3, real app processes.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, createConfigStore, createS3Client, promoteRelease, readState, publishConfig, sha256Hex, type BoundConfig, type ConfigStore } from '@kiln/shared';
import { agentPool, until, type TestAgent } from '../helpers/agent.js';
import { appEnv, pushConfigApp } from '../helpers/config-app.js';
import { makeKeys, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let configs: ConfigStore;
// Polls the pointer every second: no controller, so the pointer is all it follows.
const pool = agentPool(() => ({ s3, keys, config: { channel: 'web', pollIntervalMs: 1_000 } }));

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  configs = createConfigStore(createS3Client(s3.s3.location), s3.s3.location.bucket);
  await pushConfigApp({ store: s3.store, keys, version: '1.0.0' });
}, 30_000);
afterEach(() => pool.stopAll());
afterAll(() => s3?.close());

/** Publishes a change to `fleet`'s config; the version as a pointer binds it. */
async function publish(fleet: string, set: Record<string, string>): Promise<BoundConfig> {
  const { config, sha256 } = await publishConfig({ store: configs, app: 'web', fleet, set, key: keys.key, keys: keys.keys });
  return { fleet, seq: config.seq, sha256 };
}

const point = (config?: BoundConfig) => promoteRelease({ store: s3.store, app: 'web', version: '1.0.0', channel: 'web', key: keys.key, keys: keys.keys, ttlMs: 3_600_000, config });
const greeting = async (a: TestAgent) => (await appEnv(`http://127.0.0.1:${a.port}/`))?.GREETING;
const report = (a: TestAgent) => a.agent.report();

describe('a config bound to the release in the channel pointer', { timeout: 30_000 }, () => {
  it('boots into the release with the config its pointer names; the report carries the version, never its values', async () => {
    const v1 = await publish('web', { GREETING: 'one' });
    await point(v1);
    const a = await pool.booted();
    expect(await greeting(a)).toBe('one');
    const r = await report(a);
    expect([r.installed?.version, r.installed?.via, r.config]).toEqual(['1.0.0', 'boot', { seq: 1, sha256: v1.sha256 }]);
    expect(JSON.stringify(r)).not.toContain('one"');

    // A newer version bound to the same release: the next poll restarts the app with it.
    const v2 = await publish('web', { GREETING: 'two' });
    await point(v2);
    await until('config 2 committed', async () => (await report(a)).config?.seq === 2);
    expect(await greeting(a)).toBe('two');

    // An older version in a newer pointer is the operator going back (the pointer's seq guards replays).
    await point(v1);
    await until('back on config 1', async () => (await report(a)).config?.seq === 1);
    expect(await greeting(a)).toBe('one');
    expect((await report(a)).config).toEqual({ seq: 1, sha256: v1.sha256 });
    expect((await report(a)).lastError).toBeNull();

    // A pointer as written before configs (none named): the config running stays.
    const plain = await point();
    const layout = appLayout(a.root, 'web');
    await until('the plain pointer accepted', async () => (await readState(layout.state))?.channels.web === plain.seq);
    expect(await greeting(a)).toBe('one');
    expect((await report(a)).config?.seq).toBe(1);
  });

  it('refuses a config that is not the one the pointer names: another digest, or another fleet\'s document under its key; the app keeps its config', async () => {
    const good = await publish('web', { GREETING: 'kept' });
    await point(good);
    const a = await pool.booted();
    expect(await greeting(a)).toBe('kept');

    // The digest the pointer names is not that of the document under the key.
    await point({ ...good, sha256: '0'.repeat(64) });
    await until('the refusal reported', async () => (await report(a)).lastError?.code === 'KILN_CONFIG_MISMATCH');
    expect((await report(a)).lastError?.message).toMatch(/has sha256 [0-9a-f]{64}, not the 0{64} asked for/);
    expect(await greeting(a)).toBe('kept');

    // Another fleet's (signed) document copied under this fleet's next key, and a pointer naming it by its digest.
    const other = await publish('other', { GREETING: 'the other fleet' });
    const copied = await configs.getConfig('web', 'other', other.seq);
    const seq = good.seq + 1;
    await configs.putConfig('web', 'web', seq, copied);
    await point({ fleet: 'web', seq, sha256: sha256Hex(copied.bytes) });
    await until('the copy refused', async () => /is the document of web\/other seq 1/.test((await report(a)).lastError?.message ?? ''));
    expect((await report(a)).lastError?.code).toBe('KILN_CONFIG_MISMATCH');
    expect(await greeting(a)).toBe('kept');
    expect((await report(a)).config).toEqual({ seq: good.seq, sha256: good.sha256 });
  });
});
