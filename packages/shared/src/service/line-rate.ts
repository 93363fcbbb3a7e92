/** A follow passes at most this many lines a second (per process): an app spamming its log cannot flood the controller. */
export const MAX_LINES_PER_SECOND = 1000;
/** …and at most this many bytes a second: 1000 lines of 8 KiB would still be 8 MiB/s per stream. */
export const MAX_BYTES_PER_SECOND = 1024 * 1024;

/** The one line that stands for the lines a window dropped. */
export const skippedLine = (n: number, perSecond = MAX_LINES_PER_SECOND, bytesPerSecond = MAX_BYTES_PER_SECOND) =>
  `[kiln] ${n} line${n === 1 ? '' : 's'} skipped: over ${perSecond} lines or ${Math.round(bytesPerSecond / 1024)} KiB a second`;

export interface LineRateOptions {
  onLines: (lines: string[]) => void;
  linesPerSecond?: number;
  bytesPerSecond?: number;
  /** lines that pass before any limit (the last N lines asked for: they are bounded by N) */
  allowance?: number;
  now?: () => number;
}

export interface LineRate {
  push(lines: string[]): void;
  /** Says what the current window dropped, if anything, and stops the timer. */
  close(): void;
}

/**
 * Passes lines on within a budget per one-second window and drops the rest; once a window that
 * dropped lines is over, one line says how many (also when the app has gone quiet since).
 */
export function createLineRate(o: LineRateOptions): LineRate {
  const perSecond = o.linesPerSecond ?? MAX_LINES_PER_SECOND;
  const bytesPerSecond = o.bytesPerSecond ?? MAX_BYTES_PER_SECOND;
  const now = o.now ?? Date.now;
  let free = o.allowance ?? 0;
  let windowStart = now();
  let lines = 0;
  let bytes = 0;
  let skipped = 0;
  let timer: NodeJS.Timeout | undefined;

  function roll(): void {
    clearTimeout(timer);
    timer = undefined;
    if (skipped) o.onLines([skippedLine(skipped, perSecond, bytesPerSecond)]);
    windowStart = now();
    lines = bytes = skipped = 0;
  }

  return {
    push(batch) {
      if (now() - windowStart >= 1000) roll();
      const pass: string[] = [];
      for (const line of batch) {
        if (free > 0) {
          free--;
          pass.push(line);
        } else if (lines < perSecond && bytes + Buffer.byteLength(line) <= bytesPerSecond) {
          lines++;
          bytes += Buffer.byteLength(line);
          pass.push(line);
        } else skipped++;
      }
      if (skipped && !timer) timer = setTimeout(roll, Math.max(0, windowStart + 1000 - now()));
      if (pass.length) o.onLines(pass);
    },
    close: roll,
  };
}
