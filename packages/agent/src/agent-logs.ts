import { KilnError, MAX_LOG_FRAME_CHARS, MAX_LOG_FRAME_LINES, asKilnError, logProcesses, readAppLogs, type LogSource, type Logger, type MessageOf, type Outgoing } from '@kiln/shared';

/** Log streams served at once: each holds a follow (a file poll or a journalctl) per process. */
export const MAX_LOG_STREAMS = 4;

export interface AgentLogsOptions {
  source: LogSource;
  log: Logger;
  /** false when the frame could not go out (the connection is down): the stream ends */
  send: (message: Outgoing) => boolean;
  maxStreams?: number;
  /** how often a follow looks at a log file (default 100 ms) */
  pollMs?: number;
}

export interface AgentLogs {
  request(msg: MessageOf<'log-request'>): void;
  stop(id: string): void;
  /** Ends every stream: the connection dropped (nobody reads them any more) or the agent stops. */
  closeAll(): void;
}

/** Lines as `log-lines` frames: at most MAX_LOG_FRAME_LINES lines and MAX_LOG_FRAME_CHARS characters each. */
export function frameBatches(lines: string[]): string[][] {
  const batches: string[][] = [];
  let batch: string[] = [];
  let chars = 0;
  for (const line of lines) {
    if (batch.length && (batch.length >= MAX_LOG_FRAME_LINES || chars + line.length > MAX_LOG_FRAME_CHARS)) {
      batches.push(batch);
      batch = [];
      chars = 0;
    }
    batch.push(line);
    chars += line.length;
  }
  if (batch.length) batches.push(batch);
  return batches;
}

/**
 * The agent's side of log streams (docs/protocol.md): reads the app's output where its service
 * manager keeps it and sends it to the controller in bounded frames, at most a few streams at once.
 */
export function createAgentLogs(opts: AgentLogsOptions): AgentLogs {
  const log = opts.log.child({ module: 'logs' });
  const max = opts.maxStreams ?? MAX_LOG_STREAMS;
  const streams = new Map<string, AbortController>();

  async function serve(msg: MessageOf<'log-request'>, ac: AbortController): Promise<void> {
    const { id } = msg;
    const send = (m: Outgoing) => {
      if (!ac.signal.aborted && !opts.send(m)) ac.abort();
    };
    const processes = await logProcesses(opts.source, msg.process);
    send({ type: 'log-start', id, processes });
    const results = await Promise.allSettled(
      processes.map((process) =>
        readAppLogs({
          source: opts.source,
          process,
          lines: msg.lines,
          follow: msg.follow,
          signal: ac.signal,
          ...(opts.pollMs ? { pollMs: opts.pollMs } : {}),
          onLines: (lines) => {
            for (const batch of frameBatches(lines)) send({ type: 'log-lines', id, process, lines: batch });
          },
        }),
      ),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  return {
    request(msg) {
      if (streams.has(msg.id)) return;
      if (streams.size >= max) {
        opts.send({ type: 'log-end', id: msg.id, error: { code: 'KILN_LOGS_BUSY', message: `this agent already serves ${max} log streams; end one (a \`kiln logs --follow\`) and ask again` } });
        return;
      }
      const ac = new AbortController();
      streams.set(msg.id, ac);
      log.info({ id: msg.id, process: msg.process ?? 'all', lines: msg.lines, follow: msg.follow }, 'log stream started');
      serve(msg, ac).then(
        () => opts.send({ type: 'log-end', id: msg.id }),
        (err: unknown) => {
          const e = asKilnError(err);
          if (!(err instanceof KilnError)) log.error({ err, id: msg.id }, 'a log stream failed');
          opts.send({ type: 'log-end', id: msg.id, error: { code: e.code, message: e.message } });
        },
      ).finally(() => {
        streams.delete(msg.id);
        log.info({ id: msg.id }, 'log stream ended');
      });
    },
    stop(id) {
      streams.get(id)?.abort();
    },
    closeAll() {
      for (const ac of streams.values()) ac.abort();
    },
  };
}
