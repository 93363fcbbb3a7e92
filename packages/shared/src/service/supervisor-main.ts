#!/usr/bin/env node
// Entry of the process supervisor daemon started by createProcessSupervisor: parses argv, wires, runs.
import { parseArgs } from 'node:util';
import { createLogger } from '../system/logger.js';
import { runSupervisorDaemon } from './supervisor-daemon.js';

const { values } = parseArgs({ options: { 'app-dir': { type: 'string' } } });
if (!values['app-dir']) {
  process.stderr.write('usage: supervisor-main --app-dir DIR\n');
  process.exit(2);
}
const log = createLogger({ level: process.env.KILN_LOG_LEVEL ?? 'info', name: 'kiln-supervisor' });
// The app gets a plain environment, never the credentials of whoever started the supervisor.
const PASS = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];
const baseEnv = Object.fromEntries(PASS.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
await runSupervisorDaemon({ appDir: values['app-dir'], log, baseEnv });
process.exit(0);
