import { copyFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { AgentConfigInput } from '@kiln/agent';
import { KilnError, formatTable, pollUntil } from '@kiln/shared';
import { openApi, type ApiClient } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, S3_OPTIONS, TRUST_OPTIONS, type CommandDef } from '../cli-command.js';
import { out, printJson, resolveLocation, str, trustedKeyFiles } from '../cli-context.js';
import type { FleetBody, FleetInstances, InstanceRow } from '../../server/api-types.js';
import { readFleetCredential } from '../../local/local-files.js';
import { freePort } from '../../system/free-port.js';
import { agentsHome, listLocalAgents, logTail, previousPort, readLocalAgents, removeLocalAgents, writeLocalAgents, type LocalAgent, type LocalAgents } from '../../local/local-agents.js';
import { isRunning, spawnLocalAgent, stopLocalAgent } from '../../providers/process/agent-process.js';

const CA_IN_ROOT = '/etc/kiln/controller-ca.pem';

/** Waits until every agent shows as connected on the controller; an agent that died is an error with its log. */
async function waitConnected(api: ApiClient, fleet: string, agents: LocalAgent[], timeoutMs: number): Promise<Map<string, InstanceRow>> {
  let rows = new Map<string, InstanceRow>();
  return pollUntil({
    check: async () => {
      const { instances } = await api.get<FleetInstances>(`/v1/fleets/${encodeURIComponent(fleet)}/instances`);
      rows = new Map(instances.map((r) => [r.instanceId, r]));
      if (agents.every((a) => rows.get(a.instanceId)?.connected)) return rows;
      const dead = agents.find((a) => !isRunning(a));
      if (dead) throw new KilnError('KILN_SERVICE_FAILED', `the agent ${dead.instanceId} exited; the end of ${dead.log}:\n${await logTail(dead.log)}`);
      return undefined;
    },
    timeoutMs,
    intervalMs: 100,
    timeoutError: () => {
      const missing = agents.filter((a) => !rows.get(a.instanceId)?.connected).map((a) => a.instanceId);
      return new KilnError('KILN_AGENT_UNREACHABLE', `${missing.join(', ')} did not connect to ${api.agentsUrl} within ${timeoutMs / 1000} s; see ${missing.map((m) => agents.find((a) => a.instanceId === m)!.log).join(', ')}`);
    },
  });
}

async function agentConfig(a: { instanceId: string; root: string; port: number }, shared: Omit<AgentConfigInput, 'instanceId' | 'port'>, ca: string | undefined): Promise<AgentConfigInput> {
  if (!ca || !shared.controller) return { ...shared, instanceId: a.instanceId, port: a.port };
  // The agent reads its CA under its own root, as on an image.
  const dst = path.join(a.root, CA_IN_ROOT);
  await mkdir(path.dirname(dst), { recursive: true });
  await copyFile(ca, dst);
  return { ...shared, instanceId: a.instanceId, port: a.port, controller: { ...shared.controller, ca: CA_IN_ROOT } };
}

export const agentsStart: CommandDef = {
  name: 'agents start',
  summary: "start local agents for a fleet (instances FLEET-1..N, each with its own root and app port)",
  usage: 'agents start FLEET [--count N] [--json]',
  examples: ['kiln agents start web --count 3'],
  details:
    'Each agent gets a root .kiln/agents/FLEET-N/ with its config (the fleet\'s app and channel, the local S3, the\n' +
    "controller's agent endpoint and the fleet credential saved by `kiln fleet create`, the trusted keys, the process\n" +
    'service manager, a free port) and runs detached as `kiln-agent run --root ROOT`. Agents already running are left\n' +
    'as they are. Waits until every agent is connected. `kiln agents stop FLEET` stops them and their apps.',
  options: {
    count: { type: 'string', value: 'N', help: 'how many agents the fleet should have running here (default 1)' },
    'connect-timeout': { type: 'string', value: 'SECONDS', help: 'how long to wait for them to connect (default 30)' },
    ...API_OPTIONS,
    ...S3_OPTIONS,
    ...TRUST_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [fleetName]) {
    const countText = str(flags, 'count') ?? '1';
    if (!/^\d+$/.test(countText) || Number(countText) < 1 || Number(countText) > 200) throw new KilnError('KILN_USAGE', `--count ${countText}: a number from 1 to 200`);
    const timeoutText = str(flags, 'connect-timeout') ?? '30';
    if (!/^\d+$/.test(timeoutText)) throw new KilnError('KILN_USAGE', `--connect-timeout ${timeoutText}: a number of seconds`);
    const api = await openApi(flags, ctx);
    const { fleet } = await api.get<FleetBody>(`/v1/fleets/${encodeURIComponent(fleetName!)}`);
    const credential = await readFleetCredential(ctx.home, fleet.name);
    const keys = await Promise.all((await trustedKeyFiles(flags, ctx)).map((f) => readFile(f, 'utf8')));
    const shared: Omit<AgentConfigInput, 'instanceId' | 'port'> = {
      imageId: 'local',
      app: fleet.app,
      channel: fleet.channel,
      s3: await resolveLocation(flags, ctx),
      controller: { url: api.agentsUrl, credential },
      keys,
      serviceManager: 'process',
      backoffCapMs: 5_000,
    };
    const before = await readLocalAgents(ctx.home, fleet.name);
    // Agents already running stay as they are, and stay recorded.
    const rec: LocalAgents = { fleet: fleet.name, app: fleet.app, agents: before?.agents.filter(isRunning) ?? [] };
    const used = new Set(rec.agents.map((a) => a.port));
    const started: string[] = [];
    for (let n = 1; n <= Number(countText); n++) {
      const instanceId = `${fleet.name}-${n}`;
      if (rec.agents.some((a) => a.instanceId === instanceId)) continue;
      const root = path.join(agentsHome(ctx.home), instanceId);
      let port = await previousPort(root);
      while (port === undefined || used.has(port)) port = await freePort();
      used.add(port);
      rec.agents.push(await spawnLocalAgent({ root, config: await agentConfig({ instanceId, root, port }, shared, api.ca), env: ctx.io.env }));
      started.push(instanceId);
      // Recorded after each start: whatever fails next, every started agent stays stoppable.
      await writeLocalAgents(ctx.home, rec);
    }
    const rows = await waitConnected(api, fleet.name, rec.agents, Number(timeoutText) * 1000);
    if (ctx.json) return printJson(ctx, { fleet: fleet.name, agents: rec.agents.map((a) => ({ ...a, started: started.includes(a.instanceId), installed: rows.get(a.instanceId)?.installed ?? null })) });
    out(
      ctx,
      formatTable(
        ['INSTANCE', 'PORT', 'PID', 'AGENT', 'INSTALLED', 'ROOT'],
        rec.agents.map((a) => [a.instanceId, String(a.port), String(a.pid), started.includes(a.instanceId) ? 'started, connected' : 'already running', rows.get(a.instanceId)?.installed ?? '-', a.root]),
      ),
    );
    out(ctx, `the app of each answers on http://127.0.0.1:PORT/ once installed; \`kiln status ${fleet.name}\` shows them, \`kiln agents stop ${fleet.name}\` stops them`);
  },
};

export const agentsStop: CommandDef = {
  name: 'agents stop',
  summary: "stop a fleet's local agents and their apps",
  usage: 'agents stop FLEET [--json]',
  examples: ['kiln agents stop web'],
  details: 'Each agent gets SIGTERM (SIGKILL after 10 s), only while its recorded pid is still that process; then its app is stopped. Their roots stay for a later start.',
  options: { ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, _flags, [fleet]) {
    const rec = await readLocalAgents(ctx.home, fleet!);
    if (!rec) {
      if (ctx.json) return printJson(ctx, { fleet, agents: [] });
      return out(ctx, `no local agents of fleet ${fleet} (\`kiln agents list\` shows what runs)`);
    }
    const results = await Promise.all(rec.agents.map(async (a) => ({ ...a, ...(await stopLocalAgent(a, rec.app, ctx.log)) })));
    await removeLocalAgents(ctx.home, rec.fleet);
    if (ctx.json) return printJson(ctx, { fleet: rec.fleet, agents: results });
    for (const r of results) out(ctx, `${r.instanceId}: agent ${r.agent === 'not running' ? 'was not running' : `${r.agent} (pid ${r.pid})`}, app stopped`);
  },
};

export const agentsList: CommandDef = {
  name: 'agents list',
  summary: 'list the local agents `kiln agents start` runs, per fleet',
  usage: 'agents list [FLEET] [--json]',
  examples: ['kiln agents list', 'kiln agents list web --json'],
  options: { ...JSON_OPTION },
  positionals: [0, 1],
  async run(ctx, _flags, [fleet]) {
    const all = (await listLocalAgents(ctx.home)).filter((r) => !fleet || r.fleet === fleet);
    const rows = all.flatMap((r) => r.agents.map((a) => ({ fleet: r.fleet, ...a, running: isRunning(a) })));
    if (ctx.json) return printJson(ctx, rows);
    if (!rows.length) return out(ctx, 'no local agents: `kiln agents start FLEET --count N`');
    out(ctx, formatTable(['FLEET', 'INSTANCE', 'RUNNING', 'PID', 'PORT', 'ROOT'], rows.map((r) => [r.fleet, r.instanceId, r.running ? 'yes' : 'no', String(r.pid), String(r.port), r.root])));
  },
};
