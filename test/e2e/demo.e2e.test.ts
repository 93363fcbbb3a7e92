// `npm run demo` as a user runs it: the real binary, the whole story, and nothing left running after.
import { spawn } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { findHaproxy } from '@kiln/controller';

const MAIN = fileURLToPath(new URL('../../packages/controller/dist/main.js', import.meta.url));

it('kiln demo bakes, hotfixes, heals and relaunches a fleet of 3, prints the wall times and cleans up', async () => {
  const before = new Set((await readdir(tmpdir())).filter((n) => n.startsWith('kiln-demo-')));
  const began = Date.now();
  const child = spawn(process.execPath, [MAIN, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  const seconds = (Date.now() - began) / 1000;
  expect(code, `${stdout}\n${stderr}`).toBe(0);
  // The README's figure for the demo is what it takes (a machine busy with the rest of the suite may
  // take up to twice as long, more at a stretch), not a number from another time or machine.
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const claimed = Number(/^npm run demo .*\(~(\d+) s\)$/m.exec(readme)?.[1]);
  expect(seconds, `the README says ~${claimed} s`).toBeLessThan(claimed * 2.5);
  // each deployment's own time (its verdict's "in N s") fits in the wall time the demo measured around it
  const verdicts = [...stdout.matchAll(/ with \S+(?: with config \d+)? in (\d+\.\d) s\n/g)].map((m) => Number(m[1]));
  const table = [...stdout.matchAll(/^(?:bake \+ launch|heal \(bake \+ replace\)|relaunch) +.+ (\d+\.\d)$/gm)].map((m) => Number(m[1]));
  expect(verdicts).toHaveLength(3);
  verdicts.forEach((v, i) => expect(v, stdout).toBeLessThanOrEqual(table[i]! + 0.1));
  // The drift table marks the hotfixed instances, and the fleet is in sync after heal and after relaunch.
  expect(stdout).toMatch(/3 instances: 0 in sync, 3 off their image \(hotfixed\)/);
  expect(stdout.match(/3 instances: 3 in sync/g)?.length).toBe(2);
  expect(stdout).toMatch(/v3 +v3 +\d+ +boot/); // desired, installed, the config version, via
  for (const strategy of ['bake + launch', 'hotfix', 'heal (bake + replace)', 'relaunch']) expect(stdout).toMatch(new RegExp(`^${strategy.replace(/[()+]/g, '\\$&')} +.+ \\d+\\.\\d$`, 'm'));
  // Behind HAProxy (when installed), the fleet's endpoint answered all along: counted, none failed.
  if (await findHaproxy(process.env)) expect(stdout).toMatch(/^served throughout: [1-9]\d* requests through http:\/\/127\.0\.0\.1:\d+\/ during the hotfix, heal and relaunch, 0 failed$/m);
  else expect(stdout).toContain('no haproxy here: the fleet has no endpoint');
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
