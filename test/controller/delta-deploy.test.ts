// A hotfix of a format 2 release through a real controller and real agents: each instance's install
// fetches only what changed, and the figures go everywhere an operator looks (the deployment record,
// `kiln deploy`'s live lines, `kiln deployments show`, status and drift JSON, the agents' reports). An
// agent older than 0.4.0 (hand-made, reporting 0.3.0) is not sent a format 2 release: it fails at once
// with KILN_PROTOCOL_VERSION and what to do, and never sees the command; a format 1 release reaches it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { PROTOCOL_VERSION, formatBytes, type ReleaseRef } from '@kiln/shared';
import { until, type TestAgent } from '../helpers/agent.js';
import { operatorSession } from '../helpers/cli.js';
import { deploymentOver, startController, startFleet, type TestController } from '../helpers/controller.js';
import { agentKey, handReport, helloFrame, nonceOf } from '../helpers/raw-agent.js';
import { incompressible, makeKeys, pushApp, pushReleases, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let agents: TestAgent[];
let credential: string;
let cwd: string;
let rel: Record<string, ReleaseRef>;
const { kiln, api } = operatorSession(() => ctl, () => cwd);
/** the same 2 MiB in every release: each differs from the one before by its VERSION file */
const blob = incompressible(2);
const MiB = 1024 * 1024;

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  cwd = await tempDir('kiln-delta-deploy-cwd-');
  ctl = await startController({ s3, keys });
  rel = await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable', extra: blob }, '2.0.0': { extra: blob } });
  const fleet = await startFleet({ s3, keys, ctl, count: 2 });
  agents = fleet.agents;
  credential = fleet.credential;
  await Promise.all(agents.map((a) => a.agent.idle()));
  await until('both agents report 1.0.0', async () => (await rows()).filter((r) => r.connected && r.installed === '1.0.0').length === 2);
}, 60_000);

afterAll(async () => {
  await Promise.all((agents ?? []).map((a) => a.stop()));
  await ctl?.close();
  await s3?.close();
}, 60_000);

const rows = async () => (await api('GET', '/v1/fleets/web/instances')).body.instances as any[];

/**
 * A hand-made agent of fleet web that reports `agentVersion` and 1.0.0 installed. It answers an
 * install command as a real agent would (a result, then a report of the release installed), and keeps
 * every frame the controller sends it.
 */
async function oldAgent(instanceId: string, agentVersion: string) {
  const ws = new WebSocket(ctl.agentsUrl, { headers: { authorization: `Bearer ${credential}`, 'x-kiln-instance': instanceId } });
  const frames: any[] = [];
  const installed = (ref: ReleaseRef, via: 'baked' | 'hotfix') => ({ ...ref, artifactSha256: 'a'.repeat(64), via, installedAt: new Date().toISOString() });
  const send = (f: object) => ws.send(JSON.stringify({ v: PROTOCOL_VERSION, ...f }));
  ws.on('error', () => {});
  ws.on('message', (d) => {
    const f = JSON.parse(d.toString());
    frames.push(f);
    if (f.type !== 'command' || f.action.kind !== 'install') return;
    const { version, seq, manifestSha256 } = f.action;
    send({ type: 'result', result: { commandId: f.id, outcome: 'installed', version, finishedAt: new Date().toISOString() } });
    send({ type: 'report', report: handReport(instanceId, { agentVersion, installed: installed({ version, seq, manifestSha256 }, 'hotfix') }) });
  });
  const nonce = await nonceOf(ws);
  ws.send(helloFrame({ key: agentKey(), nonce, instanceId, report: handReport(instanceId, { agentVersion, installed: installed(rel['1.0.0']!, 'baked') }) }));
  await until(`${instanceId} connected`, () => ctl.server.kiln.hub.get(instanceId)?.connected === true);
  return { ws, frames, commands: () => frames.filter((f) => f.type === 'command') };
}

describe('a hotfix of a format 2 release', () => {
  it('fetches only what changed on each instance, and the record, kiln deploy, deployments show, status and drift say so', { timeout: 60_000 }, async () => {
    const deploy = await kiln('deploy', 'web', '2.0.0', '--batch', '1', '--health-timeout', '20s');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    const id = /^deployment (d-\S+) succeeded/m.exec(deploy.stdout)![1]!;
    const d = (await api('GET', `/v1/deployments/${id}`)).body.deployment;
    expect(d.release).toMatchObject({ version: '2.0.0', format: 2 });
    for (const i of ['web-1', 'web-2']) {
      const inst = d.instances[i];
      expect(inst.step).toBe('healthy');
      expect(inst.releaseBytes).toBeGreaterThan(2 * MiB);
      expect(inst.fetchedBytes).toBeGreaterThan(0);
      expect(inst.fetchedBytes).toBeLessThan(inst.releaseBytes / 100);
      // The live lines: what each install fetched, once, before the instance counts healthy.
      const line = `  ${i} installed 2.0.0 (fetched ${formatBytes(inst.fetchedBytes)} of ${formatBytes(inst.releaseBytes)})`;
      const lines = deploy.stdout.split('\n');
      expect(lines.filter((l) => l === line)).toHaveLength(1);
      expect(lines.indexOf(line)).toBeLessThan(lines.indexOf(`  ${i} healthy`));
      expect(line).toMatch(/\(fetched \d+(\.\d)? (B|KiB) of 2\.\d MiB\)$/);
    }

    const shown = await kiln('deployments', 'show', id);
    expect(shown.stdout).toMatch(/^INSTANCE +BATCH +STEP +FETCHED +ERROR$/m);
    expect(shown.stdout).toMatch(/^web-1 +1 +healthy +\d+(\.\d)? (B|KiB) of 2\.\d MiB +-$/m);

    // Status and drift carry the figures the agents report for what they run.
    const reported = (i: string) => ctl.server.kiln.hub.get(i)!.report!.installed!;
    for (const i of ['web-1', 'web-2']) expect(reported(i)).toMatchObject({ version: '2.0.0', via: 'hotfix', fetchedBytes: d.instances[i].fetchedBytes, releaseBytes: d.instances[i].releaseBytes });
    const status = JSON.parse((await kiln('status', 'web', '--json')).stdout);
    expect(status.instances.map((r: any) => [r.instanceId, r.installed, r.fetchedBytes, r.releaseBytes])).toEqual(
      ['web-1', 'web-2'].map((i) => [i, '2.0.0', d.instances[i].fetchedBytes, d.instances[i].releaseBytes]),
    );
    const drift = JSON.parse((await kiln('drift', 'web', '--json')).stdout);
    expect(drift.drifted.map((r: any) => [r.instanceId, r.drift, r.fetchedBytes])).toEqual(['web-1', 'web-2'].map((i) => [i, 'off-image', d.instances[i].fetchedBytes]));
    // The fleet's desired target keeps the release's format: the next deployment's `previous` has it.
    expect((await api('GET', '/v1/fleets/web')).body.fleet.desired).toMatchObject({ version: '2.0.0', format: 2 });
  });
});

describe('an agent older than 0.4.0', () => {
  it('is not sent a format 2 release: KILN_PROTOCOL_VERSION at once, with what to do; a format 1 release reaches it', { timeout: 60_000 }, async () => {
    const old = await oldAgent('web-old', '0.3.0');
    await pushApp({ store: s3.store, keys, version: '3.0.0', extra: blob });
    const deploy = await kiln('deploy', 'web', '3.0.0', '--batch', '100%', '--max-failures', '1', '--health-timeout', '20s');
    expect(deploy.code, deploy.stdout + deploy.stderr).toBe(0);
    const id = /^deployment (d-\S+) succeeded/m.exec(deploy.stdout)![1]!;
    const d = await deploymentOver(id, ctl);
    expect(d.verdict).toBe('succeeded: 2 healthy on 3.0.0, 1 failed (within the limit of 1)');
    expect(d.instances['web-old']).toMatchObject({ step: 'failed', error: { code: 'KILN_PROTOCOL_VERSION' } });
    const message: string = d.instances['web-old'].error.message;
    expect(message).toContain('web-old runs agent 0.3.0, older than 0.4.0: release 3.0.0 is of format 2, which it cannot read');
    expect(message).toContain('a bake or relaunch');
    expect(message).toContain('`kiln release push --format 1`');
    expect(d.instances['web-old']).not.toHaveProperty('fetchedBytes');
    expect(deploy.stdout).toContain('  web-old failed: KILN_PROTOCOL_VERSION web-old runs agent 0.3.0, older than 0.4.0');
    // Refused before anything was sent; the real agents installed it.
    expect(old.commands()).toEqual([]);
    expect(d.instances['web-1']).toMatchObject({ step: 'healthy', fetchedBytes: expect.any(Number) });

    // A release pushed again in format 1 reaches it (and the real agents: a whole artifact each).
    await pushApp({ store: s3.store, keys, version: '3.0.1', extra: blob, format: 1 });
    const again = await kiln('deploy', 'web', '3.0.1', '--batch', '100%', '--health-timeout', '20s');
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect(again.stdout).toMatch(/succeeded: 3 healthy on 3\.0\.1$/m);
    expect(old.commands().map((f) => [f.action.kind, f.action.version])).toEqual([['install', '3.0.1']]);
    const d1 = (await api('GET', '/v1/deployments?fleet=web')).body.deployments.at(-1);
    expect(d1.release).toMatchObject({ version: '3.0.1', format: 1 });
    // A hand-made agent that says nothing of what it fetched: nothing recorded, no line shown.
    expect(d1.instances['web-old']).not.toHaveProperty('fetchedBytes');
    expect(again.stdout).not.toContain('web-old installed');
    expect(d1.instances['web-1'].fetchedBytes).toBe(d1.instances['web-1'].releaseBytes);
    old.ws.close();
  });
});
