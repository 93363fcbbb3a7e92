import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { ifMissing, peekJsonFile, readJsonFile, writeFileAtomic } from '@kiln/shared';
import { z } from 'zod';
import { AgentProcess, agentConfigFile } from '../providers/process/agent-process.js';

/** `.kiln/agents/FLEET.json`: the local agents `kiln agents start` runs for a fleet. */
export const LocalAgents = z.object({
  fleet: z.string(),
  app: z.string(),
  agents: z.array(AgentProcess),
});
export type LocalAgents = z.infer<typeof LocalAgents>;
export type LocalAgent = AgentProcess;

export const agentsHome = (home: string) => path.join(home, 'agents');
const recordFile = (home: string, fleet: string) => path.join(agentsHome(home), `${fleet}.json`);

export const readLocalAgents = (home: string, fleet: string) => readJsonFile(recordFile(home, fleet), LocalAgents, { code: 'KILN_STATE_INVALID' });

export async function listLocalAgents(home: string): Promise<LocalAgents[]> {
  const names = (await ifMissing(readdir(agentsHome(home)), [])).filter((n) => n.endsWith('.json')).sort();
  const all = await Promise.all(names.map((n) => readLocalAgents(home, n.slice(0, -'.json'.length))));
  return all.filter((r): r is LocalAgents => !!r);
}

export async function writeLocalAgents(home: string, rec: LocalAgents): Promise<void> {
  await mkdir(agentsHome(home), { recursive: true });
  await writeFileAtomic(recordFile(home, rec.fleet), JSON.stringify(rec, null, 2) + '\n', 0o600);
}

export const removeLocalAgents = (home: string, fleet: string) => rm(recordFile(home, fleet), { force: true });

const PortOf = z.object({ port: z.number().optional() });

/** The port an earlier start gave this root's app, so a restarted agent keeps serving where it did. */
export const previousPort = async (root: string): Promise<number | undefined> => (await peekJsonFile(agentConfigFile(root), PortOf))?.port;

/** The last lines of an agent's log, for an error that says why it died. */
export async function logTail(file: string, lines = 5): Promise<string> {
  const text = await ifMissing(readFile(file, 'utf8'), '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}
