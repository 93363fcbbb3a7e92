import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createProcessSupervisor, isAlive, readSupervisorStatus, supervisorPaths, type ServiceManager, type ServiceSpec } from '@kiln/shared';
import { freePort, quietLog, tempDir } from '../helpers/release.js';

// A tiny app: serves its env as JSON, so the test sees what the supervisor gave it.
const APP = `require('node:http').createServer((q, s) => s.end(JSON.stringify({ pid: process.pid, env: process.env }))).listen(Number(process.env.PORT), '127.0.0.1');`;

const managers: ServiceManager[] = [];
afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.stop()));
});

async function setup() {
  const appDir = await tempDir('kiln-sup-');
  await mkdir(path.join(appDir, 'releases/1'), { recursive: true });
  await writeFile(path.join(appDir, 'releases/1/app.js'), APP);
  await symlink('releases/1', path.join(appDir, 'current'));
  // Picked before the app starts: the supervisor hands it to the app (PORT).
  const port = await freePort();
  const service = createProcessSupervisor({ appDir, log: quietLog(), env: { PORT: String(port) } });
  managers.push(service);
  const spec: ServiceSpec = { command: ['node', 'app.js'], env: { GREETING: 'hi' }, stopTimeoutMs: 2_000 };
  const get = async () => JSON.parse(await (await fetch(`http://127.0.0.1:${port}/`)).text()) as { pid: number; env: Record<string, string> };
  return { appDir, port, service, spec, get };
}

describe('process supervisor', () => {
  it('runs the app from current with a plain environment, the spec env and PORT', async () => {
    const { service, spec, get, port } = await setup();
    process.env.KILN_TEST_SECRET = 'do-not-leak';
    try {
      await service.restart({ processes: { web: spec } });
    } finally {
      delete process.env.KILN_TEST_SECRET;
    }
    const body = await expect.poll(get, { timeout: 5_000 }).toBeTruthy().then(get);
    expect(body.env).toMatchObject({ GREETING: 'hi', PORT: String(port) });
    expect(body.env.KILN_RELEASE_DIR).toMatch(/releases\/1$/);
    expect(body.env.KILN_TEST_SECRET).toBeUndefined();
    expect(await service.status()).toMatchObject({ active: true, pid: body.pid, port });
  });

  it('restarts the app when it is killed, and stops it cleanly', async () => {
    const { service, spec, get, appDir } = await setup();
    await service.restart({ processes: { web: spec } });
    const first = await expect.poll(get, { timeout: 5_000 }).toBeTruthy().then(get);
    process.kill(first.pid, 'SIGKILL');
    const pidNow = async () => (await get().catch(() => undefined))?.pid ?? first.pid;
    await expect.poll(pidNow, { timeout: 5_000 }).not.toBe(first.pid);
    const st = await readSupervisorStatus(supervisorPaths(appDir).status);
    expect(st?.restarts).toBe(1);
    const { pid } = await get();
    await service.stop();
    expect(isAlive(pid)).toBe(false);
    expect(await service.status()).toMatchObject({ active: false, pid: null });
  });

  it('a new supervisor ends the app a killed one left behind', async () => {
    const { service, spec, get, appDir } = await setup();
    await service.restart({ processes: { web: spec } });
    const orphan = (await expect.poll(get, { timeout: 5_000 }).toBeTruthy().then(get)).pid;
    const daemon = (await readSupervisorStatus(supervisorPaths(appDir).status))!.daemonPid;
    process.kill(daemon, 'SIGKILL');
    await expect.poll(() => isAlive(daemon)).toBe(false);
    expect(isAlive(orphan)).toBe(true);
    await service.restart({ processes: { web: spec } });
    await expect.poll(() => isAlive(orphan)).toBe(false);
    await expect.poll(async () => (await get().catch(() => undefined))?.pid, { timeout: 5_000 }).toBeGreaterThan(0);
    expect((await get()).pid).not.toBe(orphan);
  });

  // Regression: the log file opened for a spawned daemon (and for every app start) was never closed.
  it('leaves no file descriptor open in the process that starts it', async () => {
    const { service, spec } = await setup();
    const fds = async () => (await readdir('/proc/self/fd')).length;
    const before = await fds();
    await service.restart({ processes: { web: spec } });
    await service.stop();
    expect(await fds()).toBe(before);
  });
});
