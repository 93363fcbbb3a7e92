// The agent serves log streams on its connection (agent.ts wiring agent-logs.ts): a follow of its
// app's log file over a real WebSocket, stopped by `log-stop`, and ended when the connection drops.
import { appendFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appLayout, createLogger } from '@kiln/shared';
import { makeAgent, startFakeController, until, type FakeController, type TestAgent } from '../helpers/agent.js';
import { makeKeys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let fc: FakeController;
let a: TestAgent;
const logged: string[] = [];

beforeAll(async () => {
  s3 = await startS3();
  fc = await startFakeController();
  // No release on its channel: the agent only connects and serves what its app wrote before.
  a = await makeAgent({ s3, keys: makeKeys(), controller: fc, config: { channel: 'none-here' }, log: createLogger({ level: 'info', destination: { write: (l: string) => void logged.push(l) } }) });
  const appDir = appLayout(a.root, 'web').appDir;
  await mkdir(appDir, { recursive: true });
  await writeFile(path.join(appDir, 'service.json'), '{}');
  await writeFile(path.join(appDir, 'service.log'), 'one\ntwo\n');
  await a.agent.start();
  await fc.waitFor(a.instanceId, 'hello');
}, 30_000);
afterAll(async () => {
  await a?.stop();
  await fc?.close();
  await s3?.close();
});

const ended = (id: string) => logged.some((l) => l.includes('"msg":"log stream ended"') && l.includes(`"id":"${id}"`));

describe('an agent\'s log streams', () => {
  it('follows its app\'s log, stops on log-stop, and ends every follow when the connection drops', async () => {
    const linesOf = (id: string) => fc.frames.flatMap((f) => ('type' in f.msg && f.msg.type === 'log-lines' && f.msg.id === id ? f.msg.lines : []));
    fc.send(a.instanceId, { type: 'log-request', id: 'l-stop', lines: 1, follow: true });
    expect(await fc.waitFor(a.instanceId, 'log-start', (m) => m.id === 'l-stop')).toMatchObject({ processes: ['web'] });
    await until('the last line', () => linesOf('l-stop').join() === 'two');
    fc.send(a.instanceId, { type: 'log-stop', id: 'l-stop' });
    await fc.waitFor(a.instanceId, 'log-end', (m) => m.id === 'l-stop');

    fc.send(a.instanceId, { type: 'log-request', id: 'l-drop', process: 'web', lines: 0, follow: true });
    await fc.waitFor(a.instanceId, 'log-start', (m) => m.id === 'l-drop');
    await appendFile(path.join(appLayout(a.root, 'web').appDir, 'service.log'), 'three\n');
    await until('the new line', () => linesOf('l-drop').join() === 'three');
    expect(ended('l-drop')).toBe(false);
    fc.sockets.get(a.instanceId)!.terminate();
    await until('the follow ended with the connection', () => ended('l-drop'), 5_000);
  });
});
