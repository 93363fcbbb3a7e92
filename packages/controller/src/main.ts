#!/usr/bin/env node
// The `kiln` CLI entry: reads the environment, wires the IO, runs the command.
import { runCli } from './cli.js';

const code = await runCli(process.argv.slice(2), {
  io: { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd() },
  pauseAt: process.env.KILN_TEST_PAUSE_AT,
});
process.exitCode = code;
