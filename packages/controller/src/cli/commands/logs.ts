import { openApi } from '../api-client.js';
import { APP_LOG_DETAILS, APP_LOG_OPTIONS, appLogRequest, printLogLine, readUntilInterrupted } from '../app-log-print.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { note } from '../cli-context.js';
import type { LogItem } from '../../server/api-types.js';

export const logsCommand: CommandDef = {
  name: 'logs',
  summary: "an app's output on a fleet's instances: the last lines of each process, or follow new ones",
  usage: 'logs FLEET [INSTANCE] [--process P] [--lines N] [--follow]',
  examples: ['kiln logs web --lines 20', 'kiln logs web i-0abc --process worker --follow', 'kiln logs web --follow --json | jq -r .line'],
  details:
    'Asks the agent of every connected instance of the fleet (or of INSTANCE) for what the app wrote: the process\n' +
    "supervisor's log file or the unit's journal. Prints INSTANCE PROCESS | line; with --json one JSON object a line,\n" +
    '{instance, process, line}, and {instance, error} for an instance whose output could not be read (also on stderr;\n' +
    'the command then exits 1). Ctrl-C ends a follow (exit 0), and the agents stop following.\n' +
    APP_LOG_DETAILS,
  options: { ...APP_LOG_OPTIONS, ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 2],
  async run(ctx, flags, [fleet, instance]) {
    const req = appLogRequest(flags);
    const api = await openApi(flags, ctx);
    const query = new URLSearchParams({ lines: String(req.lines), follow: String(req.follow), ...(instance ? { instance } : {}), ...(req.process ? { process: req.process } : {}) });
    let failed = false;
    await readUntilInterrupted(ctx, (signal) =>
      api.lines(
        `/v1/fleets/${encodeURIComponent(fleet!)}/logs?${query}`,
        (text) => {
          const item = JSON.parse(text) as LogItem;
          if ('error' in item) {
            failed = true;
            note(ctx, `error ${item.error.code}: ${item.instance}: ${item.error.message}`);
            if (ctx.json) ctx.io.stdout.write(text + '\n');
          } else printLogLine(ctx, item);
        },
        signal,
      ),
    );
    return failed ? 1 : 0;
  },
};
