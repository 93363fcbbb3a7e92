// Issue 12, item 1: `kiln up` runs HAProxy for its fleets. A fleet on the process provider gets an
// endpoint (kiln fleet show, --json, kiln status); its port stays the same across restarts of kiln up;
// HAProxy outlives kiln up (the fleet keeps serving) and the next kiln up takes it over; kiln down
// stops it; --balancer none runs without one and says deployments are not drained.
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findHaproxy } from '@kiln/controller';
import { kiln, outputHolds, startKiln, stopKiln, type CliResult } from '../helpers/cli.js';
import { makeApp, tempDir } from '../helpers/release.js';
import { loadLoop } from '../helpers/traffic.js';

const binary = await findHaproxy(process.env);
if (!binary) console.warn('kiln up with HAProxy skipped: no haproxy on PATH or in /usr/sbin (apt-get install haproxy; .ci/run installs it)');

const json = (r: CliResult) => {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
};

describe.skipIf(!binary)('kiln up with HAProxy', { timeout: 180_000 }, () => {
  let cwd: string;
  let up: ChildProcess;
  const k = (...args: string[]) => kiln(args, { cwd });
  const endpointOf = async () => json(await k('fleet', 'show', 'web', '--json')).fleet.endpoint as string | null;

  beforeAll(async () => {
    cwd = await tempDir('kiln-up-balancer-');
    expect((await k('keys', 'generate')).code).toBe(0);
    up = startKiln(['up'], { cwd });
    const banner = await outputHolds(up, 'press Ctrl-C');
    expect(banner).toMatch(/^balancer\s+HAProxy \(pid \d+\): one frontend per fleet/m);
  });
  afterAll(async () => {
    await stopKiln(up);
    await k('down', '--wipe');
  });

  it('a fleet on the provider gets an endpoint that serves its live group, shown by fleet show and status', async () => {
    for (const v of ['1.0.0', '2.0.0']) expect((await k('release', 'push', await makeApp(v), '--app', 'web', '--version', v)).code).toBe(0);
    expect((await k('fleet', 'create', 'web', '--app', 'web', '--provider', 'process', '--size', '2')).code).toBe(0);
    const endpoint = await endpointOf();
    expect(endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const bake = await k('deploy', 'web', '1.0.0', '--strategy', 'bake');
    expect(bake.code, bake.stdout + bake.stderr).toBe(0);
    expect(bake.stdout).toContain(`drained through ${endpoint}`);
    expect(await (await fetch(endpoint!)).text()).toContain('1.0.0');
    expect((await k('fleet', 'show', 'web')).stdout).toMatch(new RegExp(`^endpoint +${endpoint!.replace(/[.]/g, '\\.')}$`, 'm'));
    expect((await k('status', 'web')).stdout).toContain(`serving at ${endpoint}`);
  });

  it('kiln up stopped: HAProxy goes on serving; the next kiln up takes it over on the same port without a failed request, and deploys drain through it', async () => {
    const endpoint = (await endpointOf())!;
    const load = loadLoop(endpoint, 2);
    const stopping = outputHolds(up, "goes on serving the fleets' endpoints");
    expect(await stopKiln(up)).toBe(0);
    await stopping;
    // No controller now: the fleet still serves through HAProxy.
    load.reset();
    await new Promise((r) => setTimeout(r, 500));
    expect(load.seen.ok).toBeGreaterThan(0);
    up = startKiln(['up'], { cwd });
    await outputHolds(up, 'press Ctrl-C');
    expect(await endpointOf()).toBe(endpoint);
    const hotfix = await k('deploy', 'web', '2.0.0', '--batch', '1');
    expect(hotfix.code, hotfix.stdout + hotfix.stderr).toBe(0);
    const seen = await load.stop();
    expect(Object.fromEntries(seen.failures)).toEqual({});
    expect(seen.bodies.get('hello from kiln-demo 2.0.0')).toBeGreaterThan(0);
  });

  it('kiln down stops HAProxy with the rest; kiln up --balancer none runs without one and says so', async () => {
    const endpoint = (await endpointOf())!;
    await stopKiln(up);
    const down = await k('down');
    expect(down.stdout).toMatch(/^HAProxy \(pid \d+\): stopped$/m);
    await expect(fetch(endpoint)).rejects.toThrow();
    up = startKiln(['up', '--balancer', 'none'], { cwd });
    const banner = await outputHolds(up, 'press Ctrl-C');
    expect(banner).toMatch(/^balancer\s+none: deployments are not drained/m);
    expect(await endpointOf()).toBeNull();
    expect((await k('fleet', 'show', 'web')).stdout).toMatch(/^endpoint +- \(no load balancer: deployments are not drained\)$/m);
    const bad = await k('up', '--balancer', 'nginx');
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringContaining('--balancer nginx: haproxy or none')]);
  });
});
