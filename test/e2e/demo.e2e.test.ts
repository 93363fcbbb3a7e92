// `npm run demo` as a user runs it: the real binary, the whole story, and nothing left running after.
import { spawn } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const MAIN = fileURLToPath(new URL('../../packages/controller/dist/main.js', import.meta.url));

it('kiln demo bakes, hotfixes, heals and relaunches a fleet of 3, prints the wall times and cleans up', async () => {
  const before = new Set((await readdir(tmpdir())).filter((n) => n.startsWith('kiln-demo-')));
  const child = spawn(process.execPath, [MAIN, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  expect(code, `${stdout}\n${stderr}`).toBe(0);
  // The drift table marks the hotfixed instances, and the fleet is in sync after heal and after relaunch.
  expect(stdout).toMatch(/3 instances: 0 in sync, 3 off their image \(hotfixed\)/);
  expect(stdout.match(/3 instances: 3 in sync/g)?.length).toBe(2);
  expect(stdout).toMatch(/v3 +v3 +boot/);
  for (const strategy of ['bake + launch', 'hotfix', 'heal (bake + replace)', 'relaunch']) expect(stdout).toMatch(new RegExp(`^${strategy.replace(/[()+]/g, '\\$&')} +.+ \\d+\\.\\d$`, 'm'));
  // Its work dir is gone; so are its processes (their roots were in it).
  const after = (await readdir(tmpdir())).filter((n) => n.startsWith('kiln-demo-') && !before.has(n));
  expect(after).toEqual([]);
  const work = /work dir (\S+)\)/.exec(stdout)![1]!;
  const running = [];
  for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(work)) running.push(`${pid}: ${cmd.replaceAll('\0', ' ')}`);
  }
  expect(running).toEqual([]);
}, 180_000);
