#!/usr/bin/env node
// The `kiln-agent` entry: reads the environment, runs the command. The same file is the daemon of the
// process supervisor the agent starts for its app (`kiln-agent --app-dir DIR`): the one-file agent
// (`kiln agent bundle`) has nothing beside it to run instead, and so built and bundled agents start it alike.
import { fileURLToPath } from 'node:url';

if (process.argv[2] === '--app-dir') {
  // The daemon lives as long as the app: it loads its own modules, not the agent's.
  await import('@kiln/shared/supervisor');
} else {
  const { runAgentCli } = await import('./agent-cli.js');
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  process.exitCode = await runAgentCli(process.argv.slice(2), {
    root: process.env.KILN_AGENT_ROOT,
    notifySocket: process.env.NOTIFY_SOCKET,
    watchdogUsec: process.env.WATCHDOG_USEC,
    supervisorCommand: [process.execPath, fileURLToPath(import.meta.url)],
    stdout: process.stdout,
    stderr: process.stderr,
  });
}
