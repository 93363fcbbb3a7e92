import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAgentConfig, type AgentConfigInput } from '@kiln/agent';
import { appLayout, createProcessSupervisor, isSameProcess, processStart, writeFileAtomic, KilnError, type Logger } from '@kiln/shared';
import { z } from 'zod';
import { stopProcess, type StopOutcome } from '../../system/stop-process.js';

// kiln-agent, the program, as the agent package exports it.
const AGENT_MAIN = fileURLToPath(import.meta.resolve('@kiln/agent/main'));

/** A `kiln-agent run` process started on its own root: by `kiln agents start`, or as a process provider's instance. */
export const AgentProcess = z.object({
  instanceId: z.string(),
  root: z.string(),
  port: z.number().int(),
  pid: z.number().int().min(2), // never 0, -1 or a process group: `kill` would reach more than one process
  /** the process's start time, so a reused pid is never signalled */
  start: z.string().nullable(),
  log: z.string(),
});
export type AgentProcess = z.infer<typeof AgentProcess>;

export const agentConfigFile = (root: string) => path.join(root, 'etc/kiln/agent.json');

export const isRunning = (a: AgentProcess) => isSameProcess(a.pid, a.start);

/** Writes the agent's config under its root (0600: it holds the fleet credential) and starts `kiln-agent run` detached. */
export async function spawnLocalAgent(args: { root: string; config: AgentConfigInput; env: Record<string, string | undefined> }): Promise<AgentProcess> {
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

/**
 * Stops a local agent (SIGTERM, then SIGKILL after `graceMs`), only while its pid is still the
 * process that was started, then its app through the process supervisor.
 */
export async function stopLocalAgent(a: AgentProcess, app: string, log: Logger, graceMs = 10_000): Promise<{ agent: StopOutcome }> {
  const agent = await stopProcess(a.pid, a.start, graceMs);
  await createProcessSupervisor({ appDir: appLayout(a.root, app).appDir, log }).stop();
  return { agent };
}
