import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseAgentConfig, type AgentConfigInput } from '@kiln/agent';
import { appLayout, createProcessSupervisor, isSameProcess, processStart, writeFileAtomic, KilnError, type Logger } from '@kiln/shared';
import { z } from 'zod';
import { readLocalJson } from './cli-context.js';

// The agent package's own entry, beside the module the package exports.
const AGENT_MAIN = fileURLToPath(new URL('./main.js', import.meta.resolve('@kiln/agent')));

/** `.kiln/agents/FLEET.json`: the local agents `kiln agents start` runs for a fleet. */
export const LocalAgents = z.object({
  fleet: z.string(),
  app: z.string(),
  agents: z.array(
    z.object({
      instanceId: z.string(),
      root: z.string(),
      port: z.number().int(),
      pid: z.number().int(),
      /** the process's start time, so a reused pid is never signalled */
      start: z.string().nullable(),
      log: z.string(),
    }),
  ),
});
export type LocalAgents = z.infer<typeof LocalAgents>;
export type LocalAgent = LocalAgents['agents'][number];

export const agentsHome = (home: string) => path.join(home, 'agents');
const recordFile = (home: string, fleet: string) => path.join(agentsHome(home), `${fleet}.json`);
export const agentConfigFile = (root: string) => path.join(root, 'etc/kiln/agent.json');

export const readLocalAgents = (home: string, fleet: string) => readLocalJson(recordFile(home, fleet), LocalAgents, 'KILN_STATE_INVALID');

export async function listLocalAgents(home: string): Promise<LocalAgents[]> {
  const names = (await readdir(agentsHome(home)).catch(() => [] as string[])).filter((n) => n.endsWith('.json')).sort();
  const all = await Promise.all(names.map((n) => readLocalAgents(home, n.slice(0, -'.json'.length))));
  return all.filter((r): r is LocalAgents => !!r);
}

export async function writeLocalAgents(home: string, rec: LocalAgents): Promise<void> {
  await mkdir(agentsHome(home), { recursive: true });
  await writeFileAtomic(recordFile(home, rec.fleet), JSON.stringify(rec, null, 2) + '\n', 0o600);
}

export const removeLocalAgents = (home: string, fleet: string) => rm(recordFile(home, fleet), { force: true });

export const isRunning = (a: LocalAgent) => isSameProcess(a.pid, a.start);

/** The port an earlier start gave this root's app, so a restarted agent keeps serving where it did. */
export async function previousPort(root: string): Promise<number | undefined> {
  try {
    const port = (JSON.parse(await readFile(agentConfigFile(root), 'utf8')) as { port?: unknown }).port;
    return typeof port === 'number' ? port : undefined;
  } catch {
    return undefined;
  }
}

/** Writes the agent's config under its root (0600: it holds the fleet credential) and starts `kiln-agent run` detached. */
export async function spawnLocalAgent(args: { root: string; config: AgentConfigInput; env: Record<string, string | undefined> }): Promise<LocalAgent> {
  const config = parseAgentConfig(args.config, `the agent config for ${args.config.instanceId}`);
  await mkdir(path.dirname(agentConfigFile(args.root)), { recursive: true });
  await writeFileAtomic(agentConfigFile(args.root), JSON.stringify(args.config, null, 2) + '\n', 0o600);
  const log = path.join(args.root, 'var/log/kiln-agent.log');
  await mkdir(path.dirname(log), { recursive: true });
  const fd = openSync(log, 'a');
  try {
    const child = spawn(process.execPath, [AGENT_MAIN, 'run', '--root', args.root], { detached: true, stdio: ['ignore', fd, fd], env: args.env });
    child.unref();
    const pid = child.pid;
    if (!pid) throw new KilnError('KILN_SERVICE_FAILED', `cannot start the agent for ${config.instanceId}; see ${log}`);
    return { instanceId: config.instanceId, root: args.root, port: config.port!, pid, start: processStart(pid), log };
  } finally {
    closeSync(fd); // the agent has its own copy
  }
}

/** The last lines of an agent's log, for an error that says why it died. */
export async function logTail(file: string, lines = 5): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Stops a local agent (SIGTERM, then SIGKILL after `graceMs`), only while its pid is still the
 * process that was started, then its app through the process supervisor.
 */
export async function stopLocalAgent(a: LocalAgent, app: string, log: Logger, graceMs = 10_000): Promise<{ agent: 'stopped' | 'killed' | 'not running' }> {
  let agent: 'stopped' | 'killed' | 'not running' = 'not running';
  if (isRunning(a)) {
    process.kill(a.pid, 'SIGTERM');
    agent = 'stopped';
    const deadline = Date.now() + graceMs;
    while (isSameProcess(a.pid, a.start) && Date.now() < deadline) await sleep(25);
    if (isSameProcess(a.pid, a.start)) {
      process.kill(a.pid, 'SIGKILL');
      agent = 'killed';
      while (isSameProcess(a.pid, a.start)) await sleep(25);
    }
  }
  await createProcessSupervisor({ appDir: appLayout(a.root, app).appDir, log }).stop();
  return { agent };
}
