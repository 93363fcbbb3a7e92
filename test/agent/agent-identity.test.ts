// Issue 16, item 13, the agent's side: the key pair that binds an instance id to its agent. Made on
// the first boot under the root (0600), the same one on every later boot (or the controller would
// refuse the instance it pinned), proved in every hello over the connection's nonce, and removed
// when a root is sealed into an image (every instance of the image makes its own).
import { createPrivateKey } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sealImage } from '@kiln/agent';
import { rawPublicKey, verifyIdentity } from '@kiln/shared';
import { agentPool, startFakeController, type FakeController } from '../helpers/agent.js';
import { STANDARD_RELEASES, makeKeys, pushReleases, quietLog } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: FakeController;
const keys = makeKeys();
const agents = agentPool(() => ({ s3, keys, controller: ctl }));

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startFakeController();
  await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES);
});
afterAll(async () => {
  await ctl.close();
  await s3.close();
});
afterEach(async () => {
  await agents.stopAll();
});

const identityFile = (root: string) => path.join(root, 'var/lib/kiln/agent/identity.key');

describe('the agent identity key', () => {
  it('is made on first boot (0600 under the root), proved in the hello, and the same key after a restart', async () => {
    const a = await agents.booted();
    const file = identityFile(a.root);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const publicKey = rawPublicKey(createPrivateKey(await readFile(file, 'utf8')));
    const hello = await ctl.waitFor(a.instanceId, 'hello');
    expect(hello.identity.publicKey).toBe(publicKey);
    // this controller sends no nonce: the agent signs the empty one, and a real controller would check its own
    expect(verifyIdentity(hello.identity, '', a.instanceId)).toBe(true);
    expect(verifyIdentity(hello.identity, 'another-connection-nonce-0123456', a.instanceId)).toBe(false);
    await a.agent.stop();

    const from = ctl.frames.length;
    const again = await agents.booted({ root: a.root, instanceId: a.instanceId, config: { port: a.port } });
    const second = await ctl.waitFor(again.instanceId, 'hello', () => ctl.frames.length > from);
    expect(second.identity.publicKey).toBe(publicKey);
  });

  it('a key file that is not a key stops the start with KILN_KEY_INVALID naming it (never silently replaced)', async () => {
    const a = await agents.make();
    await mkdir(path.dirname(identityFile(a.root)), { recursive: true });
    await writeFile(identityFile(a.root), 'not a key\n', { mode: 0o600 });
    await expect(a.agent.start()).rejects.toMatchObject({ code: 'KILN_KEY_INVALID', message: expect.stringContaining('identity.key') });
    expect(await readFile(identityFile(a.root), 'utf8')).toBe('not a key\n');
  });

  it('sealing a root into an image removes it: each instance of the image makes its own', async () => {
    const builder = await agents.booted();
    await expect(stat(identityFile(builder.root))).resolves.toBeTruthy();
    await builder.stop();
    await sealImage(builder.root, 'web', quietLog());
    await expect(stat(identityFile(builder.root))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
