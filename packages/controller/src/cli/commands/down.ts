import { readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { KilnError, peekJsonFile } from '@kiln/shared';
import { JSON_OPTION, type CommandDef } from '../cli-command.js';
import { out, printJson, type CliContext } from '../cli-context.js';
import { listLocalAgents, removeLocalAgents } from '../../local/local-agents.js';
import { LocalUp, localUpFile, writeLocalUp } from '../../local/local-files.js';
import { probeLocalStack } from '../../local/probe-local-stack.js';
import { stopLocalAgent } from '../../providers/process/agent-process.js';
import { createProcessProvider } from '../../providers/process/process-provider.js';
import { stopProcess, type StopOutcome } from '../../system/stop-process.js';
import { stopHaproxy } from '../../balancers/haproxy-process.js';

// kiln up stops its rollouts where they are and says goodbye to its agents; past this it is killed.
const UP_GRACE_MS = 60_000;

/** Files only kiln writes in a kiln directory (`kiln up`'s): generic names (`keys`, `s3`) prove nothing. */
const KILN_FILES = new Set(['up.json', 'controller.json', 's3.json', 'agent-secret']);
/** Whether `dir` is `parent` or inside it. */
function isWithin(dir: string, parent: string): boolean {
  const rel = path.relative(parent, dir);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * `--wipe` removes a whole directory: only one `kiln up` ran in, never the working directory, the
 * user's home, `/` or a directory holding one of them (a `--home` typo must not cost more than the
 * kiln directory).
 */
async function wipeable(ctx: CliContext): Promise<boolean> {
  const names = await readdir(ctx.home).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!names) return false;
  const home = path.resolve(ctx.home);
  if ([path.resolve(ctx.io.cwd), os.homedir()].some((kept) => isWithin(kept, home)) || !names.some((n) => KILN_FILES.has(n))) {
    throw new KilnError('KILN_USAGE', `--wipe: ${home} does not look like a kiln directory (none of ${[...KILN_FILES].join(', ')}), or holds the working directory or your home; remove it yourself if you mean it`);
  }
  return true;
}

/** The process provider's instances stop (agent and app); their ids, of those that ran, for the next `kiln up`. */
async function stopInstances(ctx: CliContext): Promise<string[]> {
  const provider = createProcessProvider({ dir: path.join(ctx.home, 'process'), log: ctx.log });
  const all = await provider.describeInstances({});
  const ran = all.filter((i) => i.state === 'running' || i.state === 'pending').map((i) => i.id);
  // All of them: a record that says running whose agent died still has an app to stop.
  await provider.stop(all.map((i) => i.id), { timeoutMs: 60_000 });
  return ran;
}

export const downCommand: CommandDef = {
  name: 'down',
  summary: 'stop what `kiln up` started in this directory: the controller and S3, the process instances, the local agents, HAProxy',
  usage: 'down [--wipe] [--json]',
  details:
    'Stops the `kiln up` recorded in .kiln/up.json (SIGTERM, only while that pid is still that process; SIGKILL after\n' +
    `${UP_GRACE_MS / 1000} s), then the process provider's instances (agents and apps; their roots and records stay) and the agents\n` +
    '`kiln agents start` runs for any fleet here. The next `kiln up` here starts those instances again, on the same ports;\n' +
    'local agents start again with `kiln agents start FLEET`. Rollouts running when kiln up stops are resumed or\n' +
    "marked interrupted by the next one. The nspawn provider's machines stop with kiln up. Then HAProxy (which outlives\n" +
    'kiln up so the fleets keep serving) stops; their ports stay recorded for the next kiln up.\n' +
    'With --wipe, the kiln directory (.kiln) is removed afterwards: the bucket, the release keys, the fleets\'\n' +
    'credentials, every image and instance. Nothing else is touched.',
  examples: ['kiln down', 'kiln down --wipe'],
  options: {
    wipe: { type: 'boolean', help: 'then remove the kiln directory (.kiln, or --home): data, keys, credentials, images and instances' },
    ...JSON_OPTION,
  },
  positionals: [0, 0],
  async run(ctx, flags) {
    const wipe = !!flags.wipe && (await wipeable(ctx));
    const rec = await peekJsonFile(localUpFile(ctx.home), LocalUp);
    let up: StopOutcome = 'not running';
    if (rec) up = await stopProcess(rec.pid, rec.start, UP_GRACE_MS);
    // A stack this kiln cannot name by pid is never signalled: it is reported, and --wipe refuses.
    const unknown = up === 'not running' ? await probeLocalStack(ctx.home) : undefined;
    if (unknown && wipe) throw new KilnError('KILN_ALREADY_RUNNING', `${unknown} still runs for ${ctx.home} with no pid recorded here; stop it where it runs, then \`kiln down --wipe\` again`);
    const instances = await stopInstances(ctx);
    if (rec && !wipe) await writeLocalUp(ctx.home, { ...rec, stopped: [...new Set([...rec.stopped, ...instances])] });
    const haproxy = await stopHaproxy(path.join(ctx.home, 'haproxy'), ctx.log);
    const agents = [];
    for (const local of await listLocalAgents(ctx.home)) {
      await Promise.all(local.agents.map((a) => stopLocalAgent(a, local.app, ctx.log)));
      await removeLocalAgents(ctx.home, local.fleet);
      agents.push({ fleet: local.fleet, instances: local.agents.map((a) => a.instanceId) });
    }
    if (wipe) await rm(ctx.home, { recursive: true, force: true });

    if (ctx.json) return printJson(ctx, { up: { pid: rec?.pid ?? null, result: up }, ...(unknown ? { unknown } : {}), instances, agents, haproxy, wiped: wipe ? ctx.home : null });
    const lines = [
      up === 'not running' ? `kiln up: not running for ${ctx.home}` : `kiln up (pid ${rec!.pid}): ${up}; the controller (port ${rec!.port}) and S3 (port ${rec!.s3Port}) are down`,
      ...(unknown ? [`${unknown} still answers, with no pid recorded here: stop it where it runs`] : []),
      instances.length
        ? `process instances: ${instances.length} stopped (${instances.join(' ')})${wipe ? '' : rec ? '; the next `kiln up` here starts them again' : ''}`
        : 'process instances: none running',
      ...(haproxy ? [`HAProxy (pid ${haproxy}): stopped`] : []),
      ...agents.map((a) => `local agents of ${a.fleet}: ${a.instances.join(' ')} stopped${wipe ? '' : `; \`kiln agents start ${a.fleet} --count ${a.instances.length}\` starts them again once kiln up runs`}`),
      ...(wipe ? [`removed ${ctx.home}`] : []),
    ];
    out(ctx, lines.join('\n'));
  },
};
