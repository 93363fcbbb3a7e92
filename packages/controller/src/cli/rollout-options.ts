import { KilnError, parseDuration } from '@kiln/shared';
import type { OptionDef } from './cli-command.js';
import { list, str, type Flags } from './cli-context.js';
import type { GateFields, RolloutFields } from '../server/api-types.js';

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

/** The gates of `kiln deploy` (docs/balancers.md): a canary that pauses, a soak, an error-rate limit, CloudWatch alarms. */
export const GATE_OPTIONS: Record<string, OptionDef> = {
  canary: { type: 'string', value: 'N', help: 'the first N instances (hotfix) or a group of N (bake, relaunch) take traffic, then the deployment pauses until `kiln deployments promote ID`' },
  'canary-wait': { type: 'string', value: 'DURATION', help: 'with --canary: promote by itself this long after pausing when nothing failed (10m)' },
  soak: { type: 'string', value: 'DURATION', help: 'each batch (the new group) must stay healthy this long before the next step; a crash or failed check rolls back (30s)' },
  'max-error-rate': { type: 'string', value: 'RATE', help: "with --soak: fail when the new targets' 5xx share exceeds the old ones' by more than RATE (0.05 or 5%)" },
  alarm: { type: 'string', multiple: true, value: 'NAME', help: 'with --soak: a CloudWatch alarm that fails the batch when it fires (ELBv2 fleets; repeatable)' },
};

const duration = (flags: Flags, name: string, min: number): number | undefined => {
  const text = str(flags, name);
  if (text === undefined) return undefined;
  const ms = parseDuration(text);
  if (ms === undefined || ms < min) throw new KilnError('KILN_USAGE', `--${name} ${text}: a duration like 30s, 10m or 1h`);
  return ms;
};

/** --canary, --canary-wait, --soak, --max-error-rate and --alarm as the API's fields. */
export function gateBody(flags: Flags): GateFields {
  const body: GateFields = {};
  const canary = str(flags, 'canary');
  if (canary !== undefined) {
    if (!/^[1-9]\d*$/.test(canary)) throw new KilnError('KILN_USAGE', `--canary ${canary}: a number of instances from 1`);
    body.canary = Number(canary);
  }
  const wait = duration(flags, 'canary-wait', 0);
  if (wait !== undefined) {
    if (body.canary === undefined) throw new KilnError('KILN_USAGE', '--canary-wait needs --canary N: it says how long the canary runs before it is promoted');
    body.canaryWaitMs = wait;
  }
  const soak = duration(flags, 'soak', 1);
  if (soak !== undefined) body.soakMs = soak;
  const rate = str(flags, 'max-error-rate');
  if (rate !== undefined) {
    const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(rate);
    const r = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
    if (!m || !(r >= 0 && r <= 1)) throw new KilnError('KILN_USAGE', `--max-error-rate ${rate}: a share from 0 to 1 (0.05) or a percentage (5%)`);
    body.maxErrorRate = r;
  }
  const alarms = list(flags, 'alarm');
  if (alarms.length) body.alarms = alarms;
  if ((body.maxErrorRate !== undefined || alarms.length) && soak === undefined) {
    throw new KilnError('KILN_USAGE', `${body.maxErrorRate !== undefined ? '--max-error-rate' : '--alarm'} is judged over the soak window: give --soak DURATION too (e.g. --soak 30s)`);
  }
  return body;
}
