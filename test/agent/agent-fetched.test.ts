// What an install fetched, as the agent tells it: a hotfix of a format 2 release that changes one
// small file fetches a few bytes of a release of megabytes, and says so in its result and in its
// report's `installed` (the same command again gets the same recorded result); a format 1 release
// fetches its whole artifact; a rollback to a release on disk fetches nothing. Real agent, real S3,
// a fake controller's socket.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { AgentReport, appLayout, CommandResult, InstallState, type ReleaseRef } from '@kiln/shared';
import { agentPool, installAction, startFakeController, until, type FakeController } from '../helpers/agent.js';
import { incompressible, makeKeys, pushReleases } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let ctl: FakeController;
const keys = makeKeys();
const agents = agentPool(() => ({ s3, keys, controller: ctl }));
let rel: Record<string, ReleaseRef>;

beforeAll(async () => {
  s3 = await startS3();
  ctl = await startFakeController();
  // The same 2 MiB in each release: 2.0.0 differs from 1.0.0 by its VERSION file only.
  const blob = incompressible(2);
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable', extra: blob }, '2.0.0': { extra: blob }, '3.0.0': { extra: blob, format: 1 } });
}, 60_000);
afterAll(async () => {
  await ctl?.close();
  await s3?.close();
});
afterEach(() => agents.stopAll());

const MiB = 1024 * 1024;

/** The result of command `id`, parsed as the controller parses it. */
async function resultOf(instanceId: string, id: string): Promise<CommandResult> {
  const m = await ctl.waitFor(instanceId, 'result', (r) => r.result.commandId === id);
  return CommandResult.parse(m.result);
}

/** The first report after frame `from` showing `version` installed and nothing running, parsed as the controller parses it. */
async function reportOf(instanceId: string, version: string, from: number): Promise<AgentReport> {
  const find = () =>
    ctl.frames.slice(from).find((f) => f.instanceId === instanceId && 'type' in f.msg && f.msg.type === 'report' && f.msg.report.installed?.version === version && f.msg.report.operation === null);
  await until(`${instanceId} reports ${version}`, () => !!find());
  return AgentReport.parse((find()!.msg as { report: unknown }).report);
}

/** Sends an install or rollback command; the index of the frames from which its answers come. */
function command(instanceId: string, id: string, action: Record<string, unknown>): number {
  const from = ctl.frames.length;
  ctl.command(instanceId, id, action);
  return from;
}

describe('agent: what an install fetched', () => {
  it('a format 2 hotfix of one small file: the result and the report say a few bytes fetched of megabytes', { timeout: 60_000 }, async () => {
    const a = await agents.booted();
    // The boot install fetched the whole release: it had nothing.
    const booted = (await a.agent.report()).installed!;
    expect(booted).toMatchObject({ version: '1.0.0', via: 'boot' });
    expect(booted.releaseBytes).toBeGreaterThan(2 * MiB);
    expect(booted.fetchedBytes).toBe(booted.releaseBytes);

    const sent = command(a.instanceId, 'cmd-delta', installAction(rel['2.0.0']!));
    const result = await resultOf(a.instanceId, 'cmd-delta');
    expect(result).toMatchObject({ outcome: 'installed', version: '2.0.0' });
    expect(result.fetchedBytes).toBeGreaterThan(0);
    expect(result.releaseBytes).toBeGreaterThan(2 * MiB);
    expect(result.fetchedBytes!).toBeLessThan(result.releaseBytes! / 100);
    expect(await a.serving()).toContain('kiln-demo 2.0.0');

    const report = await reportOf(a.instanceId, '2.0.0', sent);
    expect(report.installed).toMatchObject({ via: 'hotfix', fetchedBytes: result.fetchedBytes, releaseBytes: result.releaseBytes });

    // The host's command log keeps them too: a hello after a reconnect rebuilds its results from it.
    const state = InstallState.parse(JSON.parse(await readFile(appLayout(a.root, 'web').state, 'utf8')));
    expect(state.commands.find((c) => c.commandId === 'cmd-delta')).toMatchObject({ fetchedBytes: result.fetchedBytes, releaseBytes: result.releaseBytes });

    // The same command again is one install: the recorded result comes back, figures and all.
    ctl.command(a.instanceId, 'cmd-delta', installAction(rel['2.0.0']!));
    await until('the replayed result', () => ctl.frames.filter((f) => f.instanceId === a.instanceId && 'type' in f.msg && f.msg.type === 'result').length === 2);
    const replayed = ctl.frames.filter((f) => f.instanceId === a.instanceId && 'type' in f.msg && f.msg.type === 'result').at(-1)!.msg as { result: CommandResult };
    expect(replayed.result).toEqual(result);

    // Back to 1.0.0, on disk: nothing fetched.
    const back0 = command(a.instanceId, 'cmd-back', { kind: 'rollback', version: '1.0.0', manifestSha256: rel['1.0.0']!.manifestSha256 });
    const back = await resultOf(a.instanceId, 'cmd-back');
    expect(back).toMatchObject({ outcome: 'installed', version: '1.0.0', fetchedBytes: 0, releaseBytes: booted.releaseBytes });
    expect((await reportOf(a.instanceId, '1.0.0', back0)).installed).toMatchObject({ via: 'rollback', fetchedBytes: 0 });
  });

  it('a format 1 release: its whole artifact is fetched, whatever the host holds', { timeout: 60_000 }, async () => {
    const a = await agents.booted();
    const sent = command(a.instanceId, 'cmd-v1', installAction(rel['3.0.0']!));
    const result = await resultOf(a.instanceId, 'cmd-v1');
    expect(result).toMatchObject({ outcome: 'installed', version: '3.0.0' });
    expect(result.releaseBytes).toBeGreaterThan(2 * MiB);
    expect(result.fetchedBytes).toBe(result.releaseBytes);
    expect((await reportOf(a.instanceId, '3.0.0', sent)).installed).toMatchObject({ fetchedBytes: result.fetchedBytes, releaseBytes: result.releaseBytes });
  });
});
