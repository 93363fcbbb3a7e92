import { randomBytes } from 'node:crypto';
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
