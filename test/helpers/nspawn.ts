import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LaunchOptions, NspawnProvider } from '@kiln/controller';
import { FAST_LAUNCHED_AGENT } from './fast-agent.js';
import type { S3Fixture } from './s3.js';

/** What a test controller launches nspawn machines with: systemd inside, quick agents, one-minute deadlines. */
export function nspawnLaunch(provider: NspawnProvider, s3: S3Fixture): LaunchOptions {
  return {
    provider,
    agentSecret: randomBytes(32),
    s3: s3.s3.location,
    serviceManager: 'systemd',
    agentSettings: FAST_LAUNCHED_AGENT,
    bakeTimeouts: { launchMs: 60_000, installMs: 60_000, imageMs: 60_000 },
    launchTimeoutMs: 60_000,
  };
}

/** The body an HTTP GET of `address` answers with, or '' when it does not answer within 2 s. */
export async function answers(address: string): Promise<string> {
  const res = await fetch(address, { signal: AbortSignal.timeout(2_000) }).catch(() => null);
  return res ? res.text() : '';
}

/** Ends a suite's controller, every machine of its provider, and its S3 (each when it was started). */
export async function stopMachines(ctl: { close(): Promise<void> } | undefined, provider: NspawnProvider | undefined, s3: S3Fixture | undefined): Promise<void> {
  await ctl?.close();
  if (provider) {
    await provider.terminate((await provider.describeInstances({})).map((i) => i.id));
    await provider.shutdown();
  }
  await s3?.close();
}

/**
 * An instance's own files in its upper layer before it boots: the agent (from this checkout,
 * mounted read-only at /opt/kiln), its unit enabled (with a drop-in when given), and its config.
 */
export async function writeAgentInstance(upper: string, config: object, unitDropIn?: string): Promise<void> {
  const repo = fileURLToPath(new URL('../..', import.meta.url));
  await mkdir(path.join(upper, 'usr/local/bin'), { recursive: true });
  await writeFile(path.join(upper, 'usr/local/bin/kiln-agent'), '#!/bin/sh\nexec /usr/bin/node /opt/kiln/packages/agent/dist/main.js "$@"\n');
  await chmod(path.join(upper, 'usr/local/bin/kiln-agent'), 0o755);
  const units = path.join(upper, 'etc/systemd/system');
  await mkdir(path.join(units, 'multi-user.target.wants'), { recursive: true });
  await copyFile(path.join(repo, 'packages/agent/units/kiln-agent.service'), path.join(units, 'kiln-agent.service'));
  await symlink('/etc/systemd/system/kiln-agent.service', path.join(units, 'multi-user.target.wants/kiln-agent.service'));
  if (unitDropIn) {
    await mkdir(path.join(units, 'kiln-agent.service.d'), { recursive: true });
    await writeFile(path.join(units, 'kiln-agent.service.d/test.conf'), unitDropIn);
  }
  await mkdir(path.join(upper, 'etc/kiln'), { recursive: true });
  await writeFile(path.join(upper, 'etc/kiln/agent.json'), JSON.stringify(config, null, 2));
}
