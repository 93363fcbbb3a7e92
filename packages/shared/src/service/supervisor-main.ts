#!/usr/bin/env node
// Entry of the process supervisor daemon started by createProcessSupervisor: parses argv, wires, runs.
import { parseArgs } from 'node:util';
import { createLogger } from '../system/logger.js';
import { plainEnv } from './plain-env.js';
import { runSupervisorDaemon } from './supervisor-daemon.js';

const { values } = parseArgs({ options: { 'app-dir': { type: 'string' }, process: { type: 'string', default: 'web' } } });
if (!values['app-dir']) {
  process.stderr.write('usage: supervisor-main --app-dir DIR [--process NAME]\n');
  process.exit(2);
}
const log = createLogger({ level: process.env.KILN_LOG_LEVEL ?? 'info', name: 'kiln-supervisor' });
await runSupervisorDaemon({ appDir: values['app-dir'], process: values.process, log, baseEnv: plainEnv() });
process.exit(0);
