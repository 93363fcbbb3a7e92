/** A line of an app's output is cut past this many bytes (UTF-8): a line is for a person, and a frame must stay small. */
export const MAX_LINE_BYTES = 8 * 1024;

/** The first `max` bytes of a UTF-8 line, never ending inside a character. */
export function cutBytes(buf: Buffer, max = MAX_LINE_BYTES): string {
  if (buf.length <= max) return buf.toString('utf8');
  let end = max;
  // 0b10xxxxxx continues a character: step back to its first byte, which then stays out.
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.subarray(0, end).toString('utf8');
}

export interface LineSplitter {
  /** Splits bytes into whole lines (without "\n" or "\r\n"); returns them, each cut at MAX_LINE_BYTES. */
  push(chunk: Buffer): string[];
  /** The line left without a newline (e.g. the last of a stream that ended), if any; forgets it. */
  flush(): string[];
  /** Forgets the piece of a line held (the file it came from was truncated). */
  reset(): void;
}

/**
 * Bytes to lines for a stream read in chunks. A line longer than the cut is cut at once and the rest
 * of it dropped as it arrives, so a process that writes no newline cannot make the splitter hold
 * more than one line's worth of bytes.
 */
export function createLineSplitter(max = MAX_LINE_BYTES): LineSplitter {
  let held: Buffer[] = [];
  let heldBytes = 0;
  /** the current line was already emitted, cut: drop its bytes up to its newline */
  let dropping = false;

  const line = (buf: Buffer) => cutBytes(buf.at(-1) === 0x0d ? buf.subarray(0, -1) : buf, max);

  return {
    push(chunk) {
      const out: string[] = [];
      let at = 0;
      while (at < chunk.length) {
        const nl = chunk.indexOf(0x0a, at);
        const piece = chunk.subarray(at, nl < 0 ? chunk.length : nl);
        at = nl < 0 ? chunk.length : nl + 1;
        if (!dropping) {
          held.push(piece);
          heldBytes += piece.length;
        }
        if (nl >= 0) {
          if (!dropping) out.push(line(Buffer.concat(held, heldBytes)));
          held = [];
          heldBytes = 0;
          dropping = false;
        } else if (!dropping && heldBytes > max) {
          out.push(line(Buffer.concat(held, heldBytes)));
          held = [];
          heldBytes = 0;
          dropping = true;
        }
      }
      return out;
    },
    flush() {
      const rest = heldBytes > 0 && !dropping ? [line(Buffer.concat(held, heldBytes))] : [];
      held = [];
      heldBytes = 0;
      dropping = false;
      return rest;
    },
    reset() {
      held = [];
      heldBytes = 0;
      dropping = false;
    },
  };
}
