import { pino, type Logger, type DestinationStream } from 'pino';

export interface LoggerOptions {
  level?: string;
  name?: string;
  destination?: DestinationStream;
}

/** The one root logger of a process; everything else takes `log.child({ module })`. */
export function createLogger(opts: LoggerOptions = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      ...(opts.name ? { name: opts.name } : {}),
      redact: { paths: ['*.secretAccessKey', '*.accessKeyId', '*.token', '*.credential', 'headers.authorization'], censor: '[redacted]' },
    },
    opts.destination ?? pino.destination(2),
  );
}

export type { Logger };
