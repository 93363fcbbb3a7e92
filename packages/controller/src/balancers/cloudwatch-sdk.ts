// The AWS SDK's CloudWatch module, loaded when an alarm watch first calls AWS instead of when
// @kiln/controller is imported (see ec2-sdk.ts for why, and why require() gives the same classes
// an `import` would: aws-sdk-client-mock matches commands by class).
import { createRequire } from 'node:module';
import type * as ClientCloudWatch from '@aws-sdk/client-cloudwatch';

const require = createRequire(import.meta.url);

let cloudWatch: typeof ClientCloudWatch | undefined;

/** @aws-sdk/client-cloudwatch */
export const cloudWatchSdk = (): typeof ClientCloudWatch => (cloudWatch ??= require('@aws-sdk/client-cloudwatch') as typeof ClientCloudWatch);
