// What the agent keeps between reports and tree checks, and why it stays true: state.json is read
// again whenever the file changed (whoever wrote it), and the digests an install hands over hold
// only while the files keep the stamps they had when written.
import { appendFile, lstat, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkTree, rememberDigests, stateReader, type DigestCache } from '@kiln/agent';
import { appLayout, emptyState, fileStamp, install, writeState, type ExtractedFile } from '@kiln/shared';
import { makeHost, type Host } from '../helpers/host.js';
import { makeKeys, pushApp, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
const keys = makeKeys();
const hosts: Host[] = [];
let manifest: Awaited<ReturnType<typeof pushApp>>['manifest'];

beforeAll(async () => {
  s3 = await startS3();
  ({ manifest } = await pushApp({ store: s3.store, keys, version: '1.0.0' }));
});
afterAll(() => s3.close());
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

describe('stateReader', () => {
  it('answers from memory while state.json is unchanged, and reads it again after any write, atomic or in place', async () => {
    const root = await tempDir('kiln-test-state-');
    const layout = appLayout(root, 'web');
    await mkdir(path.dirname(layout.state), { recursive: true });
    const read = stateReader(layout, 'web', quietLog());
    expect((await read()).current).toBeNull(); // no file yet

    await writeState(layout.state, { ...emptyState('web'), channels: { stable: 1 } });
    const first = await read();
    expect(first.channels).toEqual({ stable: 1 });
    expect(await read()).toBe(first); // unchanged: the same object, not a new read

    // What the install routine (or `kiln host install` beside the agent) does: a new file renamed into place.
    await writeState(layout.state, { ...emptyState('web'), channels: { stable: 2 } });
    expect((await read()).channels).toEqual({ stable: 2 });

    // An edit in place (same inode) changes the size or the times.
    const text = JSON.stringify({ ...emptyState('web'), channels: { stable: 3 } });
    await writeFile(layout.state, text);
    expect((await read()).channels).toEqual({ stable: 3 });
  });
});

describe('digests handed over by the install', () => {
  it('match the files as installed, so the tree check trusts them; a file changed afterwards is still found', async () => {
    const h = await makeHost({ store: s3.store, keys });
    hosts.push(h);
    let files: ExtractedFile[] = [];
    await install({ ...h.opts(), target: { version: '1.0.0' }, onExtracted: (f) => (files = f) });
    const releaseDir = appLayout(h.root, 'web').release('1.0.0');
    const manifestFiles = manifest.files.filter((f) => f.type === 'file');
    expect(files.map((f) => f.path).sort()).toEqual(manifestFiles.map((f) => f.path).sort());
    for (const f of files) {
      // the stamp taken when written still holds after the rename into releases/ and the commit
      expect(f.stamp).toBe(fileStamp(await lstat(path.join(releaseDir, f.path))));
      expect(f.sha256).toBe(manifestFiles.find((m) => m.path === f.path)!.sha256);
    }

    const cache: DigestCache = new Map();
    rememberDigests(cache, files);
    expect((await checkTree(releaseDir, manifest.files, cache, new Date(), manifest.persist)).status).toBe('ok');
    // Changed after the install: a new stamp, so it is read and hashed again, not trusted.
    const victim = files[0]!.path;
    await appendFile(path.join(releaseDir, victim), 'tampered');
    const after = await checkTree(releaseDir, manifest.files, cache, new Date(), manifest.persist);
    expect(after).toMatchObject({ status: 'modified', modified: 1, paths: [`M ${victim}`] });
  });
});
