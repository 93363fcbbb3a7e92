import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AgentReport, peekJsonFile } from '@kiln/shared';

/** The running agent's latest report, for `kiln-agent status` in another process. */
export const reportFile = (agentDir: string) => path.join(agentDir, 'report.json');

export async function writeReportFile(agentDir: string, report: AgentReport): Promise<void> {
  // Renamed into place but not fsynced: it is rebuilt on every change, and a lost one costs nothing.
  const tmp = `${reportFile(agentDir)}.tmp`;
  const text = JSON.stringify(report) + '\n';
  try {
    await writeFile(tmp, text);
  } catch (err) {
    // The directory is made once, when it is missing, not before each of the ~10 reports of an install.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(agentDir, { recursive: true });
    await writeFile(tmp, text);
  }
  await rename(tmp, reportFile(agentDir));
}

/** The last report, or undefined when there is none or it cannot be read: status then goes without the live facts. */
export const readReportFile = (agentDir: string): Promise<AgentReport | undefined> => peekJsonFile(reportFile(agentDir), AgentReport);
