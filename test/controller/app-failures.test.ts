// A failed install says why in words a person acts on, through the controller: the crash and its
// last lines in the deployment and in `kiln status`'s LAST ERROR; a --health-timeout shorter than
// the release's own health check is refused before anything moves.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deploymentOver, fleetRows, startController, startFleet, type TestController } from '../helpers/controller.js';
import type { TestAgent } from '../helpers/agent.js';
import { makeKeys, pushApp, pushReleases, STANDARD_RELEASES } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const keys = makeKeys();
let s3: S3Fixture;
let ctl: TestController;
let agents: TestAgent[];

beforeAll(async () => {
  s3 = await startS3();
  await pushReleases({ store: s3.store, keys }, STANDARD_RELEASES);
  const health = { type: 'http', path: '/healthz', timeoutMs: 20_000 };
  await pushApp({ store: s3.store, keys, version: '3.0.0', kilnJson: { service: { command: ['sh', '-c', 'echo "fatal: DATABASE_URL is not set" >&2; exit 3'], port: 8080 }, health } });
  ctl = await startController({ s3, keys });
  ({ agents } = await startFleet({ s3, keys, ctl, count: 1 }));
  await Promise.all(agents.map((a) => a.agent.idle()));
}, 60_000);
afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await ctl.close();
  await s3.close();
});

describe('honest failures through the controller', () => {
  it('refuses a --health-timeout shorter than the release\'s own health check, with a hint', async () => {
    const r = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0', healthTimeoutMs: 2_000 });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('KILN_REQUEST_INVALID');
    expect(r.body.error.message).toContain("shorter than web 3.0.0's own health check (20 s)");
    expect(r.body.error.message).toMatch(/give --health-timeout \d+s or more, or leave it out/);
  });

  it('an app that exits with code 3 fails the deployment with that, its last line, and shows in LAST ERROR', async () => {
    const t = Date.now();
    const r = await ctl.api('POST', '/v1/deployments', { fleet: 'web', version: '3.0.0' });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    // without --health-timeout the wait covers the release's own 20 s check
    expect(r.body.deployment.healthTimeoutMs).toBeGreaterThanOrEqual(20_000);
    const d = await deploymentOver(r.body.deployment.id, ctl, 30_000);
    expect(d.state).toBe('failed');
    const inst = Object.values(d.instances)[0] as { error: { code: string; message: string } };
    expect(inst.error.code).toBe('KILN_APP_CRASHED');
    expect(inst.error.message).toMatch(/^web exited with code 3 \(\d+ restarts in \d+ s\); its last lines:\n/);
    expect(inst.error.message).toContain('fatal: DATABASE_URL is not set');
    // well before the 20 s health timeout
    expect(Date.now() - t).toBeLessThan(15_000);
    const [row] = await fleetRows('web', ctl);
    expect(row.lastError).toMatch(/^KILN_APP_CRASHED: web exited with code 3 \(\d+ restarts in \d+ s\)$/);
    expect(row.installed).toBe('1.0.0');
  });
});
