// `kiln agent bundle` / `kiln agent publish`: the agent as one file that runs with Node alone, copied
// where no node_modules can help it (as in an image from a plain base image), and its place in the bucket.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_VERSION, AgentReport, appLayout, createProcessSupervisor, createS3Client, readSupervisorStatus, supervisorPaths } from '@kiln/shared';
import { buildAgentBundle, publishAgentBundle, readPublishedAgent, runCli, type AgentBundle } from '@kiln/controller';
import { servingOn, until, writeAgentConfig } from '../helpers/agent.js';
import { finished } from '../helpers/cli.js';
import { makeKeys, pushApp, quietLog, tempDir } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';

const AGENT_UNIT = fileURLToPath(new URL('../../packages/agent/units/kiln-agent.service', import.meta.url));

let s3: S3Fixture;
let bundle: AgentBundle;
const keys = makeKeys();
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  s3 = await startS3();
  await pushApp({ store: s3.store, keys, version: '1.0.0', channel: 'stable' });
  bundle = await buildAgentBundle({ outDir: await tempDir('kiln-test-bundle-'), log: quietLog() });
}, 60_000);
afterAll(() => s3?.close());
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const client = () => createS3Client(s3.s3.location);

/** A directory with no node_modules in it or above it: what the bundle finds on a plain base image. */
async function bare(prefix: string): Promise<string> {
  const dir = await tempDir(prefix);
  for (let d = dir; d !== path.dirname(d); d = path.dirname(d)) expect(existsSync(path.join(d, 'node_modules')), `${d}/node_modules exists`).toBe(false);
  return dir;
}

/** Runs the copied bundle with this Node and nothing else: no NODE_PATH, cwd outside the checkout. */
function runBundle(file: string, args: string[]) {
  const child = spawn(process.execPath, [file, ...args], { cwd: path.dirname(file), env: { ...process.env, NODE_PATH: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
  return { child, done: finished(child) };
}

async function getObject(key: string): Promise<Buffer> {
  const res = await client().send(new GetObjectCommand({ Bucket: s3.s3.location.bucket, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

describe('buildAgentBundle', () => {
  it('writes one executable file with a hashbang and the unit as is; sha256, size and version describe them', async () => {
    const code = await readFile(bundle.file);
    expect(path.basename(bundle.file)).toBe('kiln-agent.mjs');
    expect(code.subarray(0, 20).toString()).toBe('#!/usr/bin/env node\n');
    expect((await stat(bundle.file)).mode & 0o777).toBe(0o755);
    expect(bundle.bytes).toBe(code.byteLength);
    expect(bundle.sha256).toBe(sha256(code));
    expect(bundle.version).toMatch(new RegExp(`^${AGENT_VERSION.replaceAll('.', '\\.')}-[0-9a-f]{12}$`));
    expect(await readFile(bundle.unit, 'utf8')).toBe(await readFile(AGENT_UNIT, 'utf8'));
    expect(path.basename(bundle.unit)).toBe('kiln-agent.service');
  });

  it('carries every package: at run time it loads only Node built-ins (and ws\'s optional native helpers)', async () => {
    const text = await readFile(bundle.file, 'utf8');
    const loaded = [...text.matchAll(/^import\b[^'"\n]*['"]([^'"]+)['"]/gm), ...text.matchAll(/__require\(["']([^"']+)["']\)/g)].map((m) => m[1]!);
    const builtin = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
    expect(loaded.length).toBeGreaterThan(0);
    expect(loaded.filter((m) => !builtin.has(m) && !['bufferutil', 'utf-8-validate'].includes(m))).toEqual([]);
  });

  it('is reproducible: the same sources give the same bytes and version', async () => {
    const again = await buildAgentBundle({ outDir: await tempDir('kiln-test-bundle-again-') });
    expect({ sha256: again.sha256, version: again.version, bytes: again.bytes }).toEqual({ sha256: bundle.sha256, version: bundle.version, bytes: bundle.bytes });
  });
});

describe('the bundle on a host without node_modules', () => {
  it('answers --help, and status on a root with a config', async () => {
    const dir = await bare('kiln-test-bundle-bare-');
    const file = path.join(dir, 'kiln-agent.mjs');
    await copyFile(bundle.file, file);
    const { root } = await writeAgentConfig({ s3, keys });
    const [help, status] = await Promise.all([runBundle(file, ['--help']).done, runBundle(file, ['status', '--root', root, '--json']).done]);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^kiln-agent: installs releases/);
    expect(status.code, status.stderr).toBe(0);
    const report = AgentReport.parse(JSON.parse(status.stdout));
    expect(report).toMatchObject({ app: 'web', channel: 'stable', installed: null });
  });

  it('run, installed as ROOT/usr/local/bin/kiln-agent: installs the channel\'s release at boot and serves it through the supervisor it carries', async () => {
    const root = await bare('kiln-test-bundle-root-');
    const { port } = await writeAgentConfig({ s3, keys, root });
    // Like the unit's ExecStart: no .mjs, so Node must recognise the file as a module by its syntax.
    const bin = path.join(root, 'usr/local/bin/kiln-agent');
    await mkdir(path.dirname(bin), { recursive: true });
    await copyFile(bundle.file, bin);
    await chmod(bin, 0o755);
    const { appDir } = appLayout(root, 'web');
    cleanups.push(() => createProcessSupervisor({ appDir, log: quietLog() }).stop());
    const { child, done } = runBundle(bin, ['run', '--root', root]);
    cleanups.push(async () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL'));

    const reportFile = path.join(root, 'var/lib/kiln/agent/report.json');
    const report = async () => AgentReport.safeParse(JSON.parse(await readFile(reportFile, 'utf8').catch(() => 'null'))).data;
    const installed = async () => {
      if (child.exitCode !== null) throw new Error(`the bundled agent exited ${child.exitCode}`);
      return (await report())?.installed?.version === '1.0.0';
    };
    await until('the bundled agent reports 1.0.0 installed at boot', installed, 30_000).catch(async (err: Error) => {
      child.kill('SIGKILL');
      throw new Error(`${err.message}; agent stderr: ${(await done).stderr.slice(-3000)}`);
    });
    expect((await report())!.installed).toMatchObject({ version: '1.0.0', via: 'boot' });
    expect(await servingOn(port)).toMatch(/^hello from kiln-demo 1\.0\.0/);
    // The app's supervisor daemon is the bundle too, started with --app-dir.
    const sup = await readSupervisorStatus(supervisorPaths(appDir).status);
    const cmdline = (await readFile(`/proc/${sup!.daemonPid}/cmdline`, 'utf8')).split('\0');
    expect(cmdline.slice(1, 3)).toEqual([bin, '--app-dir']);

    child.kill('SIGTERM');
    const out = await done;
    expect(out.code, out.stderr).toBe(0);
  }, 60_000);
});

describe('publishAgentBundle / readPublishedAgent', () => {
  it('puts the file and its unit under agent/ and points agent/latest.json at them', async () => {
    const prefix = 'pub-1/';
    const bucket = s3.s3.location.bucket;
    expect(await readPublishedAgent({ s3: client(), bucket, prefix })).toBeNull();
    const published = await publishAgentBundle({ s3: client(), bucket, prefix, bundle, now: () => new Date('2030-01-02T03:04:05Z') });
    expect(published).toEqual({
      bucket,
      key: `pub-1/agent/kiln-agent-${bundle.version}.mjs`,
      unitKey: `pub-1/agent/kiln-agent-${bundle.version}.service`,
      sha256: bundle.sha256,
      bytes: bundle.bytes,
      version: bundle.version,
    });
    const stored = await getObject(published.key);
    expect(stored.byteLength).toBe(bundle.bytes);
    expect(sha256(stored)).toBe(bundle.sha256);
    const unit = await getObject(published.unitKey);
    expect(unit.toString()).toBe(await readFile(AGENT_UNIT, 'utf8'));
    expect(await readPublishedAgent({ s3: client(), bucket, prefix })).toEqual({
      version: bundle.version,
      key: published.key,
      unitKey: published.unitKey,
      sha256: bundle.sha256,
      unitSha256: sha256(unit),
      bytes: bundle.bytes,
      publishedAt: '2030-01-02T03:04:05.000Z',
    });
    // another prefix is another deployment of kiln
    expect(await readPublishedAgent({ s3: client(), bucket, prefix: 'pub-other/' })).toBeNull();
  });

  it('refuses a bundle file changed since it was bundled: KILN_ARTIFACT_DIGEST, latest.json untouched', async () => {
    const dir = await tempDir('kiln-test-bundle-tampered-');
    const file = path.join(dir, 'kiln-agent.mjs');
    await copyFile(bundle.file, file);
    await writeFile(file, '\n// added\n', { flag: 'a' });
    const bucket = s3.s3.location.bucket;
    await expect(publishAgentBundle({ s3: client(), bucket, prefix: 'pub-2/', bundle: { ...bundle, file } })).rejects.toMatchObject({ code: 'KILN_ARTIFACT_DIGEST' });
    expect(await readPublishedAgent({ s3: client(), bucket, prefix: 'pub-2/' })).toBeNull();
  });

  it('reads a latest.json that does not parse as KILN_STATE_INVALID', async () => {
    const objects = { s3: client(), bucket: s3.s3.location.bucket, prefix: 'pub-3/' };
    await objects.s3.send(new PutObjectCommand({ Bucket: objects.bucket, Key: 'pub-3/agent/latest.json', Body: '{"version": 1}' }));
    await expect(readPublishedAgent(objects)).rejects.toMatchObject({ code: 'KILN_STATE_INVALID' });
  });
});

describe('kiln agent bundle / kiln agent publish', () => {
  /** `kiln ARGS` in this process, the way the binary runs it, with HOME as its .kiln and no bucket in the environment. */
  async function kilnIn(home: string, args: string[]) {
    let stdout = '';
    let stderr = '';
    const sink = (add: (s: string) => void) => new Writable({ write: (chunk, _enc, cb) => (add(String(chunk)), cb()) });
    const io = { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)), env: { KILN_HOME: home }, cwd: home };
    const code = await runCli(args, { io, log: quietLog() });
    return { code, stdout, stderr };
  }

  it('agent bundle writes to .kiln/agent-bundle by default and prints the path, size and sha256', async () => {
    const home = await tempDir('kiln-test-bundle-home-');
    const { code, stdout, stderr } = await kilnIn(home, ['agent', 'bundle']);
    expect(code, stderr).toBe(0);
    const file = path.join(home, 'agent-bundle/kiln-agent.mjs');
    expect(stdout).toContain(file);
    expect(stdout).toContain(bundle.sha256);
    expect(stdout).toMatch(/\d+(\.\d+)? MiB/);
    expect(sha256(await readFile(file))).toBe(bundle.sha256);
    expect(existsSync(path.join(home, 'agent-bundle/kiln-agent.service'))).toBe(true);
  });

  it('agent publish --json uploads to the bucket kiln up runs and prints the keys', async () => {
    const home = await tempDir('kiln-test-bundle-home-');
    await writeFile(path.join(home, 's3.json'), JSON.stringify({ ...s3.s3.location, prefix: 'cli/' }));
    const { code, stdout, stderr } = await kilnIn(home, ['agent', 'publish', '--out', 'out', '--json']);
    expect(code, stderr).toBe(0);
    const printed = JSON.parse(stdout) as { key: string; unitKey: string; sha256: string; version: string };
    expect(printed).toMatchObject({ key: `cli/agent/kiln-agent-${bundle.version}.mjs`, unitKey: `cli/agent/kiln-agent-${bundle.version}.service`, sha256: bundle.sha256, version: bundle.version });
    expect(existsSync(path.join(home, 'out/kiln-agent.mjs'))).toBe(true);
    expect(await readPublishedAgent({ s3: client(), bucket: s3.s3.location.bucket, prefix: 'cli/' })).toMatchObject({ key: printed.key, sha256: bundle.sha256 });
  });

  it('agent publish with no bucket anywhere: KILN_CONFIG_INVALID before any bundling', async () => {
    const home = await tempDir('kiln-test-bundle-home-');
    const { code, stderr } = await kilnIn(home, ['agent', 'publish']);
    expect(code).toBe(1);
    expect(stderr).toMatch(/^error KILN_CONFIG_INVALID: /m);
    expect(existsSync(path.join(home, 'agent-bundle'))).toBe(false);
  });
});
