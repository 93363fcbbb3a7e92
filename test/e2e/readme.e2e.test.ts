// The README runs as written: every line of its shell blocks, in order, from the top of a checkout
// with a fresh .kiln (a temp dir whose bin/, packages/, scripts/ and package.json are the checkout's),
// through bash, as a user pastes them. `CMD &` runs in the background (kiln up: ready when it says
// "press Ctrl-C"); a `curl` line checks its answer against the comment beside it; every other line
// exits 0; before each `kiln down --wipe`, every object in the bucket must have its place in the
// layout docs/release-format.md draws. The one line left out is the quickstart's `npm test`: it is
// this suite.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Location, createS3Client, isAlive, s3Objects } from '@kiln/shared';
import { until } from '../helpers/agent.js';

const TOP = fileURLToPath(new URL('../../', import.meta.url));
const LINKED = ['bin', 'packages', 'scripts', 'node_modules', 'package.json', 'pnpm-workspace.yaml', 'pnpm-lock.yaml'];
/** Lines that are not run, and why. */
const LEFT_OUT: Record<string, string> = { 'npm test': 'the whole suite: this test is part of it' };
const HAS_CURL = spawnSync('curl', ['--version']).status === 0;

interface Block {
  section: string;
  lines: string[];
}

/** The README's ```sh blocks with the heading they stand under, their lines without blank and comment-only ones. */
async function readmeBlocks(): Promise<Block[]> {
  const text = await readFile(path.join(TOP, 'README.md'), 'utf8');
  const blocks: Block[] = [];
  let section = '';
  let open: Block | undefined;
  for (const line of text.split('\n')) {
    if (open) {
      if (line.startsWith('```')) (blocks.push(open), (open = undefined));
      else if (line.trim() && !line.trim().startsWith('#')) open.lines.push(line.trim());
    } else if (line.startsWith('## ')) section = line.slice(3);
    else if (line === '```sh') open = { section, lines: [] };
  }
  return blocks;
}

/** The command and its comment: `cmd   # comment` (a `#` inside the command would need quoting; the README has none). */
function split(line: string): { cmd: string; comment: string } {
  const at = line.search(/\s#\s/);
  return at < 0 ? { cmd: line, comment: '' } : { cmd: line.slice(0, at).trim(), comment: line.slice(at).replace(/^\s#\s*/, '').trim() };
}

let dir: string;
const env = { ...process.env };
for (const k of ['KILN_CONTROLLER', 'KILN_TOKEN', 'KILN_HOME', 'NO_COLOR']) delete env[k];
const background: ChildProcess[] = [];

/** One line through bash in the checkout: its exit code, its output (stdout and stderr as they came) and its stdout. */
function bash(cmd: string, timeoutMs: number): Promise<{ code: number | null; out: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', cmd], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stdout = '';
    child.stdout.on('data', (d) => ((out += d), (stdout += d)));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => (clearTimeout(timer), resolve({ code, out, stdout })));
  });
}

/** `kiln up &`: started, and ready once it prints its pid line. */
async function startBackground(cmd: string): Promise<void> {
  expect(cmd, 'the README test knows how to wait for `kiln up &` only').toMatch(/^\.\/bin\/kiln up\b/);
  const child = spawn('bash', ['-c', `exec ${cmd}`], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  background.push(child);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd}: not ready after 60 s:\n${out}`)), 60_000);
    const look = (d: Buffer) => {
      out += d;
      if (/press Ctrl-C/.test(out)) (clearTimeout(timer), resolve());
    };
    child.stdout!.on('data', look);
    child.stderr!.on('data', look);
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`${cmd} exited (${code}):\n${out}`))));
  });
}

/** A `curl URL` line: what it prints holds the answer its comment shows. curl where installed, else the same GET. */
async function curl(cmd: string, expected: string): Promise<void> {
  const url = /^curl (\S+)$/.exec(cmd)?.[1];
  expect(url, `${cmd}: the README test runs "curl URL" only`).toBeDefined();
  const body = HAS_CURL ? await bash(cmd, 10_000).then((r) => (expect(r.code, r.out).toBe(0), r.stdout)) : await (await fetch(url!)).text();
  expect(body, cmd).toContain(expected);
}

/** The bucket layout docs/release-format.md draws, as patterns: `<name>` is one path segment, `(.sig)` optional. */
async function documentedLayout(): Promise<RegExp[]> {
  const doc = await readFile(path.join(TOP, 'docs/release-format.md'), 'utf8');
  const drawing = /```\ns3:\/\/BUCKET\/PREFIX\/\n([\s\S]*?)```/.exec(doc)?.[1];
  expect(drawing, 'docs/release-format.md draws the bucket under s3://BUCKET/PREFIX/').toBeDefined();
  return drawing!.split('\n').filter(Boolean).map((l) => {
    const key = l.trim().split(/\s+/)[0]!;
    const pattern = key.replace(/[.]/g, '\\.').replace(/\(\\\.sig\)/g, '(?:\\.sig)?').replace(/<[a-z0-9]+>/g, '[^/]+');
    return new RegExp(`^${pattern}$`);
  });
}

/** Every object in the bucket `kiln up` serves has its place in docs/release-format.md's layout. */
async function everyObjectDocumented(): Promise<void> {
  const loc = S3Location.parse(JSON.parse(await readFile(path.join(dir, '.kiln/s3.json'), 'utf8')));
  const keys = await s3Objects(createS3Client(loc), loc.bucket).list('');
  expect(keys.length).toBeGreaterThan(0);
  const layout = await documentedLayout();
  expect(keys.filter((k) => !layout.some((re) => re.test(k))), 'objects docs/release-format.md does not show').toEqual([]);
}

async function runLine(line: string): Promise<void> {
  const { cmd, comment } = split(line);
  if (cmd.endsWith('&')) return startBackground(cmd.slice(0, -1).trim());
  if (cmd.startsWith('curl ')) return curl(cmd, comment);
  if (/^\.\/bin\/kiln down --wipe\b/.test(cmd)) await everyObjectDocumented(); // before: the bucket goes with .kiln
  const r = await bash(cmd, 240_000);
  expect(r.code, `${line}\n${r.out}`).toBe(0);
  if (/^\.\/bin\/kiln down --wipe\b/.test(cmd)) {
    // what kiln up started is gone with it, and so is .kiln
    for (const child of background) await until(`kiln up (pid ${child.pid}) gone after ${cmd}`, () => child.exitCode !== null || child.signalCode !== null, 5_000);
    await expect(stat(path.join(dir, '.kiln')), `.kiln after ${cmd}`).rejects.toThrow();
  }
}

const blocks = await readmeBlocks();

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'kiln-readme-'));
  for (const name of LINKED) await symlink(path.join(TOP, name), path.join(dir, name));
});

/**
 * What a block that failed midway left running goes, so the next block starts as the README says:
 * the apps of the host roots it installed, kiln up and all it started (the README's way), then by pid.
 */
async function cleanUp(block: Block): Promise<void> {
  for (const line of block.lines) {
    const host = /^\.\/bin\/kiln host install (\S+) .*--root (\S+)/.exec(split(line).cmd);
    if (host) await bash(`./bin/kiln host stop ${host[1]} --root ${host[2]}`, 60_000);
  }
  await bash('./bin/kiln down --wipe', 120_000);
  for (const child of background) if (child.pid && isAlive(child.pid)) child.kill('SIGKILL');
}

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the README, block by block, as written', () => {
  it('has shell blocks under the sections a new user follows', () => {
    expect(blocks.map((b) => b.section)).toEqual(['Quickstart', 'Using the CLI', 'Fleets and hotfixes', 'Images, relaunch, bake and heal']);
  });

  for (const [i, block] of blocks.entries()) {
    it(`block ${i + 1} (${block.section}): every line runs${HAS_CURL ? '' : ' (curl lines as a plain GET: curl is not installed)'}`, async () => {
      try {
        for (const line of block.lines) {
          if (LEFT_OUT[split(line).cmd]) continue;
          await runLine(line);
        }
      } catch (err) {
        await cleanUp(block);
        throw err;
      }
    }, 600_000);
  }
});
