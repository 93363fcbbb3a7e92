#!/usr/bin/env node
// The `kiln-agent` entry: reads the environment, runs the command.
import { runAgentCli } from './agent-cli.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

process.exitCode = await runAgentCli(process.argv.slice(2), {
  root: process.env.KILN_AGENT_ROOT,
  notifySocket: process.env.NOTIFY_SOCKET,
  watchdogUsec: process.env.WATCHDOG_USEC,
  stdout: process.stdout,
  stderr: process.stderr,
});
