#!/usr/bin/env node
// The `kiln` CLI entry: reads the environment, wires the IO, runs the command.
import { runCli } from './cli/cli.js';

// kiln supports Node >= 20; the AWS SDK's notice about its own future minimum is not the user's concern here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const code = await runCli(process.argv.slice(2), {
  io: { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd() },
  pauseAt: process.env.KILN_TEST_PAUSE_AT,
});
process.exitCode = code;
