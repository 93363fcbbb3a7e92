#!/usr/bin/env node
// Entry of the process supervisor daemon started by createProcessSupervisor: parses argv, wires, runs.
import { parseArgs } from 'node:util';
import { createLogger } from './logger.js';
import { runSupervisorDaemon } from './supervisor-daemon.js';

const { values } = parseArgs({ options: { 'app-dir': { type: 'string' } } });
if (!values['app-dir']) {
  process.stderr.write('usage: supervisor-main --app-dir DIR\n');
  process.exit(2);
}
const log = createLogger({ level: process.env.KILN_LOG_LEVEL ?? 'info', name: 'kiln-supervisor' });
await runSupervisorDaemon({ appDir: values['app-dir'], log, baseEnv: process.env });
process.exit(0);
