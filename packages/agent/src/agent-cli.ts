import path from 'node:path';
import { parseArgs } from 'node:util';
import { appLayout, createLogger, createProcessSupervisor, createSystemdService, formatTable, ifKilnError, isKilnError, readJournal, type AgentReport, type Logger } from '@kiln/shared';
import { createAgent } from './agent.js';
import { configPath, loadAgentConfig, type AgentConfig } from './agent-config.js';
import { collectReport, treeCheckOf } from './agent-report.js';
import { sealImage } from './agent-seal.js';
import { readImageMarker } from './image-marker.js';
import { createNotifier } from './systemd-notify.js';
import { readReportFile } from './report-file.js';

export const AGENT_HELP = `kiln-agent: installs releases at boot and on the controller's command, and reports what runs.

usage: kiln-agent COMMAND [options]

commands:
  run      boot path (recover, image marker, channel), then the live path (controller, polling)
  status   what this instance runs: installed release, how it got there, tree check, last error
  seal     record the installed release as this image's baked release (run before creating an image)

options:
  --root DIR      the root everything lives under (default /; env KILN_AGENT_ROOT)
  --config FILE   the config file (default ROOT/etc/kiln/agent.json)
  --json          status: print JSON
  -h, --help      show this help
`;

export interface AgentCliEnv {
  root?: string | undefined;
  notifySocket?: string | undefined;
  watchdogUsec?: string | undefined;
  /** how `run` starts its app's process supervisor daemon (see AgentOptions) */
  supervisorCommand?: string[];
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** Runs one kiln-agent command; resolves with the exit code (`run` resolves only when stopped by a signal). */
export async function runAgentCli(argv: string[], env: AgentCliEnv): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { root: { type: 'string' }, config: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  } catch (err) {
    env.stderr.write(`error KILN_USAGE: ${(err as Error).message}\n\n${AGENT_HELP}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...extra] = positionals;
  if (values.help || !command) {
    (values.help ? env.stdout : env.stderr).write(AGENT_HELP);
    return values.help ? 0 : 2;
  }
  if (!['run', 'status', 'seal'].includes(command) || extra.length > 0) {
    env.stderr.write(`error KILN_USAGE: unknown command ${JSON.stringify([command, ...extra].join(' '))}\n\n${AGENT_HELP}`);
    return 2;
  }
  const root = path.resolve(values.root ?? env.root ?? '/');
  try {
    const config = await loadAgentConfig(root, values.config ?? configPath(root));
    const log = createLogger({ level: command === 'run' ? config.logLevel : 'warn', name: 'kiln-agent' });
    if (command === 'seal') {
      const marker = await sealImage(root, config.app, log);
      env.stdout.write(values.json ? JSON.stringify(marker) + '\n' : `sealed: the image carries ${config.app} ${marker.release!.version}\n`);
      return 0;
    }
    if (command === 'status') {
      const report = await localReport(root, config, log);
      env.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      return 0;
    }
    return await run(root, config, log, env);
  } catch (err) {
    if (!isKilnError(err)) throw err;
    env.stderr.write(`error ${err.code}: ${err.message}\n`);
    if (values.json) env.stdout.write(JSON.stringify({ error: err.toJSON() }) + '\n');
    return 1;
  }
}

async function run(root: string, config: AgentConfig, log: Logger, env: AgentCliEnv): Promise<number> {
  const notifier = createNotifier({ NOTIFY_SOCKET: env.notifySocket, WATCHDOG_USEC: env.watchdogUsec }, log);
  const agent = createAgent({ root, config, log, supervisorCommand: env.supervisorCommand });
  await agent.start();
  notifier.ready(`serving ${config.app} on ${config.instanceId}`);
  // Neither signal listeners nor the agent's unref'd timers keep the process alive; with no controller
  // socket it would exit once booted.
  const alive = setInterval(() => undefined, 2 ** 30);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  clearInterval(alive);
  log.info({ signal }, 'stopping');
  notifier.stop();
  await agent.stop();
  return 0;
}

/** The report as the running agent would send it, from the disk; live facts from its last report file. */
async function localReport(root: string, config: AgentConfig, log: Logger): Promise<AgentReport> {
  const layout = appLayout(root, config.app);
  const env = config.port ? { env: { PORT: String(config.port) } } : {};
  const service = config.serviceManager === 'systemd' ? createSystemdService({ root, app: config.app, log, ...env }) : createProcessSupervisor({ appDir: layout.appDir, log, ...env });
  const last = await readReportFile(path.join(layout.root, 'var/lib/kiln/agent'));
  // A journal or marker that does not parse shows as none here; the agent itself reports it.
  const journal = await ifKilnError(readJournal(layout.journal), ['KILN_STATE_INVALID'], undefined);
  const marker = await ifKilnError(readImageMarker(root, config.app), ['KILN_STATE_INVALID'], undefined);
  const now = new Date();
  const operation = journal ? { ...(journal.commandId ? { commandId: journal.commandId } : {}), op: journal.op, version: journal.version, step: journal.step, startedAt: journal.startedAt } : null;
  return collectReport(
    { root, instanceId: config.instanceId, imageId: config.imageId, app: config.app, channel: config.channel, agentVersion: last?.agentVersion ?? '-', marker, service, log },
    { tree: await treeCheckOf(root, config.app, new Map(), now), operation, lastError: last?.lastError ?? null, queued: last?.queued ?? 0 },
    now,
  );
}

export function formatReport(r: AgentReport): string {
  const rel = (x: { version: string; seq: number } | null) => (x ? `${x.version} (seq ${x.seq})` : 'none');
  const t = r.tree;
  const tree = t.status === 'modified' ? `modified: ${t.modified} changed, ${t.missing} missing, ${t.extra} extra (${t.paths.join(', ')})` : t.status;
  const rows = [
    ['instance', r.instanceId],
    ['image', `${r.imageId}, baked with ${rel(r.image)}`],
    ['installed', r.installed ? `${rel(r.installed)} via ${r.installed.via} at ${r.installed.installedAt}` : 'none'],
    ['sha256', r.installed?.artifactSha256 ?? '-'],
    ['service', r.service.active ? 'running' : 'not running'],
    ['tree', tree],
    ['operation', r.operation ? `${r.operation.op} ${r.operation.version} at ${r.operation.step}${r.operation.commandId ? ` (command ${r.operation.commandId})` : ''}` : 'none'],
    ['last error', r.lastError ? `${r.lastError.code}: ${r.lastError.message}` : 'none'],
  ];
  return formatTable(['', `${r.app} on channel ${r.channel}`], rows);
}

