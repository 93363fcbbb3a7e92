#!/usr/bin/env node
// The `kiln` CLI entry: reads the environment, wires the IO, runs the command.
import { runCli } from './cli/cli.js';

// kiln supports Node >= 20; the AWS SDK's notice about its own future minimum is not the user's concern here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// `kiln status web | head -3`: the reader has gone, and what is left to print has nowhere to go. That is
// the reader's choice, not a failure: end quietly, as `cat` does, instead of an EPIPE stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(process.exitCode ?? 0);
  });
}

const code = await runCli(process.argv.slice(2), {
  io: {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    onInterrupt: (handler) => {
      process.on('SIGINT', handler);
      return () => void process.off('SIGINT', handler);
    },
  },
  pauseAt: process.env.KILN_TEST_PAUSE_AT,
});
process.exitCode = code;
