import { KilnError, parseDuration } from '@kiln/shared';
import type { OptionDef } from './cli-command.js';
import { str, type Flags } from './cli-context.js';
import type { RolloutFields } from '../server/api-types.js';

/** The options of every command that starts a rollout (deploy, rollback, heal). */
export const ROLLOUT_OPTIONS: Record<string, OptionDef> = {
  batch: { type: 'string', value: '25%|N', help: "a share or a number of the fleet's instances per batch (default 25%)" },
  'max-failures': { type: 'string', value: 'N', help: 'instances that may fail before the deployment stops and rolls back (default 0)' },
  'health-timeout': { type: 'string', value: 'DURATION', help: 'how long an instance has to report the release healthy: 30s, 2m (default 30s)' },
  'no-wait': { type: 'boolean', help: 'print the deployment and return at once instead of following it' },
};

/** --batch, --max-failures and --health-timeout as the API's fields (absent ones take the API's defaults). */
export function rolloutBody(flags: Flags): RolloutFields {
  const body: RolloutFields = {};
  const batch = str(flags, 'batch');
  if (batch !== undefined) {
    const m = /^(\d+)(%?)$/.exec(batch);
    const n = Number(m?.[1]);
    if (!m || n < 1 || (m[2] && n > 100)) throw new KilnError('KILN_USAGE', `--batch ${batch}: a share from 1% to 100%, or a number of instances from 1`);
    body.batch = m[2] ? { percent: n } : { count: n };
  }
  const max = str(flags, 'max-failures');
  if (max !== undefined) {
    if (!/^\d+$/.test(max)) throw new KilnError('KILN_USAGE', `--max-failures ${max}: a whole number from 0`);
    body.maxFailures = Number(max);
  }
  const timeout = str(flags, 'health-timeout');
  if (timeout !== undefined) {
    const ms = parseDuration(timeout);
    if (!ms || ms < 100) throw new KilnError('KILN_USAGE', `--health-timeout ${timeout}: a duration like 30s or 2m`);
    body.healthTimeoutMs = ms;
  }
  return body;
}
