import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ServiceSpec, appUnitName, renderAppUnit, unitEnvironment } from '@kiln/shared';
import { tempDir } from '../helpers/release.js';

const AGENT_UNIT = fileURLToPath(new URL('../../packages/agent/units/kiln-agent.service', import.meta.url));
const run = promisify(execFile);

async function which(cmd: string): Promise<boolean> {
  return run('sh', ['-c', `command -v ${cmd}`]).then(() => true, () => false);
}
const hasAnalyze = await which('systemd-analyze');

/** `systemd-analyze verify`: exit 0 is not enough, unknown keys and bad values only print to stderr. */
async function verify(unitFile: string): Promise<{ code: number; stderr: string }> {
  try {
    const r = await run('systemd-analyze', ['verify', '--man=no', unitFile]);
    return { code: 0, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
}

describe.skipIf(!hasAnalyze)(`systemd units pass systemd-analyze verify${hasAnalyze ? '' : ' (skipped: systemd-analyze is not installed)'}`, () => {
  it('the agent unit verifies with empty stderr, is Type=notify with a watchdog and never denies W+X memory', async () => {
    const text = await readFile(AGENT_UNIT, 'utf8');
    expect(text).toMatch(/^Type=notify$/m);
    expect(text).toMatch(/^WatchdogSec=/m);
    expect(text).toMatch(/^Restart=on-failure$/m);
    expect(text).not.toMatch(/^MemoryDenyWriteExecute/m);
    // verify checks that ExecStart exists: point it at an executable of ours for the host lint
    // (the real-systemd test verifies the unit unchanged inside a container where it exists).
    const dir = await tempDir('kiln-test-units-');
    const bin = path.join(dir, 'kiln-agent');
    await writeFile(bin, '#!/bin/sh\n');
    await chmod(bin, 0o755);
    const unit = path.join(dir, 'kiln-agent.service');
    await writeFile(unit, text.replace('ExecStart=/usr/local/bin/kiln-agent', `ExecStart=${bin}`));
    expect(await verify(unit)).toEqual({ code: 0, stderr: '' });
  });

  it('an app unit rendered from a service spec with awkward words verifies, and its words survive', async () => {
    const dir = await tempDir('kiln-test-units-');
    const releaseDir = path.join(dir, 'releases', '1.0.0');
    await mkdir(releaseDir, { recursive: true });
    const spec = ServiceSpec.parse({ command: ['node', 'server.js', 'two words', '$HOME', '100%', 'quote"back\\slash'], env: { GREETING: 'hello $USER at 50%', EMPTY: '' }, port: 8080 });
    const text = renderAppUnit({ app: 'web', spec, releaseDir, env: { PORT: '9123' } });
    const unit = path.join(dir, 'kiln-app-web.service');
    await writeFile(unit, text);
    expect(await verify(unit)).toEqual({ code: 0, stderr: '' });
    expect(text).toContain('ExecStart="node" "server.js" "two words" "$$HOME" "100%%" "quote\\"back\\\\slash"');
    expect(unitEnvironment(text)).toEqual({ GREETING: 'hello $USER at 50%', EMPTY: '', KILN_RELEASE_DIR: releaseDir, PORT: '9123' });
    expect(text).toMatch(/^Restart=always$/m);
    expect(text).toMatch(/^DynamicUser=yes$/m);
  });

  it("another process's unit, with the fleet's environment file and persistent directories, verifies", async () => {
    const dir = await tempDir('kiln-test-units-');
    const releaseDir = path.join(dir, 'releases', '1.0.0');
    await mkdir(releaseDir, { recursive: true });
    const spec = ServiceSpec.parse({ command: ['node', 'worker.js'] });
    const text = renderAppUnit({ app: 'shop', process: 'worker', spec, releaseDir, envFile: '/run/kiln/apps/shop/config-3.env', dataDirs: ['/var/lib/kiln/apps/shop/data/uploads', '/var/lib/kiln/apps/shop/data/cache'] });
    const unit = path.join(dir, appUnitName('shop', 'worker'));
    expect(path.basename(unit)).toBe('kiln-app-shop.worker.service');
    await writeFile(unit, text);
    expect(await verify(unit)).toEqual({ code: 0, stderr: '' });
    expect(text).toMatch(/^EnvironmentFile=\/run\/kiln\/apps\/shop\/config-3\.env$/m);
    expect(text).toMatch(/^StateDirectory=kiln-shop kiln\/apps\/shop\/data\/uploads kiln\/apps\/shop\/data\/cache$/m);
    expect(text).toMatch(/^User=kiln-shop$/m);
    expect(text).toContain('Description=kiln app shop (worker)');
  });

  it('a bad key in a unit is caught by the lint (the lint can fail)', async () => {
    const dir = await tempDir('kiln-test-units-');
    const unit = path.join(dir, 'broken.service');
    await writeFile(unit, '[Service]\nExecStart=/bin/true\nRestartt=always\n');
    const r = await verify(unit);
    expect(r.stderr).toMatch(/Restartt/);
  });
});
