import type { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { isKilnError, KilnError, type Logger } from '@kiln/shared';
import { awsCall } from '../providers/ec2/ec2-calls.js';
import { cloudWatchSdk } from './cloudwatch-sdk.js';
import type { AlarmWatch } from './balancer.js';

/**
 * CloudWatch alarms watched during a deploy's soak: on ELBv2, which keeps no per-target counters,
 * the operator's alarms (5xx count, target response time, …) are the error-rate gate.
 */
export interface CloudWatchAlarms extends AlarmWatch {
  /** resolves when every watched alarm exists; otherwise KILN_BALANCER_FAILED naming the missing ones (call it before the deploy starts) */
  check(): Promise<void>;
}

export interface AlarmWatchOptions {
  /** a client of the region the alarms are in */
  client: CloudWatchClient;
  /** alarm names as in the console (exact, case-sensitive): metric, composite or log alarms */
  names: string[];
  log: Logger;
}

/** DescribeAlarms takes at most 100 names and answers at most 100 alarms a page. */
const PAGE = 100;

export function createAlarmWatch(o: AlarmWatchOptions): CloudWatchAlarms {
  const names = [...new Set(o.names)];
  const log = o.log.child({ module: 'cloudwatch-alarms' });

  /** The state of every watched alarm; a name CloudWatch does not know is KILN_BALANCER_FAILED, never "not firing". */
  async function states(): Promise<Map<string, string>> {
    const seen = new Map<string, string>();
    for (let i = 0; i < names.length; i += PAGE) {
      const AlarmNames = names.slice(i, i + PAGE);
      let NextToken: string | undefined;
      do {
        const input = { AlarmNames, AlarmTypes: ['MetricAlarm' as const, 'CompositeAlarm' as const, 'LogAlarm' as const], MaxRecords: PAGE, ...(NextToken ? { NextToken } : {}) };
        const out = await cloudWatchCall('DescribeAlarms', () => o.client.send(new (cloudWatchSdk().DescribeAlarmsCommand)(input)));
        // without AlarmTypes CloudWatch answers metric alarms only, and a composite one would look missing
        for (const a of [...(out.MetricAlarms ?? []), ...(out.CompositeAlarms ?? []), ...(out.LogAlarms ?? [])]) {
          if (a.AlarmName) seen.set(a.AlarmName, a.StateValue ?? 'INSUFFICIENT_DATA');
        }
        NextToken = out.NextToken;
      } while (NextToken);
    }
    const missing = names.filter((n) => !seen.has(n));
    if (missing.length > 0) {
      const which = missing.length === 1 ? `alarm ${missing[0]} does not exist` : `alarms ${missing.join(', ')} do not exist`;
      throw new KilnError('KILN_BALANCER_FAILED', `cloudwatch: ${which} in the client's region (names are exact and case-sensitive)`, { details: { missing } });
    }
    return seen;
  }

  return {
    async check() {
      if (names.length > 0) await states();
    },
    async firing() {
      if (names.length === 0) return [];
      const seen = await states();
      log.debug({ alarms: Object.fromEntries(seen) }, 'alarm states');
      return names.filter((n) => seen.get(n) === 'ALARM');
    },
  };
}

/** One SDK call; a failure is KILN_BALANCER_FAILED "cloudwatch <Operation> failed: <AWS error name>: …" with the SDK error as cause. */
function cloudWatchCall<T>(op: string, fn: () => Promise<T>): Promise<T> {
  return awsCall('cloudwatch', op, fn).catch((err: unknown) => {
    // awsCall words the message; the code is the balancer's, not the provider's
    throw isKilnError(err, 'KILN_PROVIDER_FAILED') ? new KilnError('KILN_BALANCER_FAILED', err.message, { cause: err.cause }) : err;
  });
}
