import { isPollTimeout, isSameProcess, pollUntil } from '@kiln/shared';

export type StopOutcome = 'stopped' | 'killed' | 'not running';

/** A process that ended between the check and the signal (ESRCH) is what was wanted. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/**
 * Stops the process `pid` only while it is still the one that started at `start` (a pid is reused):
 * SIGTERM, then SIGKILL once `graceMs` have passed; resolves when it is gone.
 */
export async function stopProcess(pid: number, start: string | null, graceMs: number): Promise<StopOutcome> {
  if (!isSameProcess(pid, start)) return 'not running';
  const gone = () => !isSameProcess(pid, start);
  signal(pid, 'SIGTERM');
  try {
    await pollUntil({ check: gone, timeoutMs: graceMs });
    return 'stopped';
  } catch (err) {
    if (!isPollTimeout(err)) throw err;
  }
  signal(pid, 'SIGKILL');
  await pollUntil({ check: gone, timeoutMs: Infinity });
  return 'killed';
}
