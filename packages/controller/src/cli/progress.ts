import type { Writable } from 'node:stream';
import { formatBytes } from '@kiln/shared';

export interface Progress {
  /** a new phase: a line of its own */
  phase(text: string): void;
  /** bytes done of a total: a bar on a terminal, nothing otherwise */
  bytes(done: number, total: number): void;
  /** a status line redrawn in place on a terminal, nothing otherwise */
  status(text: string): void;
  done(): void;
}

/** Progress on a stream: a redrawn bar or status line on a TTY, plain phase lines otherwise (logs, CI, pipes). */
export function createProgress(stream: Writable & { isTTY?: boolean; columns?: number }, quiet = false): Progress {
  const tty = !!stream.isTTY && !quiet;
  let drawn = false;
  let lastDraw = 0;
  const clear = () => {
    if (drawn) stream.write('\r\x1b[K');
    drawn = false;
  };
  const draw = (text: string) => {
    // A terminal that does not say its width (columns 0) is taken as 80 wide.
    stream.write(`\r\x1b[K${text.slice(0, Math.max(20, (stream.columns || 80) - 1))}`);
    drawn = true;
  };
  return {
    phase(text) {
      if (quiet) return;
      clear();
      stream.write(`${text}\n`);
    },
    bytes(done, total) {
      if (!tty || Date.now() - lastDraw < 80) return;
      lastDraw = Date.now();
      const width = Math.max(10, Math.min(40, (stream.columns || 80) - 40));
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const fill = Math.round(frac * width);
      draw(`  [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}%  ${formatBytes(done)} / ${formatBytes(total)}`);
    },
    status(text) {
      if (tty) draw(text);
    },
    done: clear,
  };
}
