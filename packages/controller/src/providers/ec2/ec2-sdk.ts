// The AWS SDK's EC2 and ELBv2 modules, loaded when an ec2 provider first calls AWS instead of when
// @kiln/controller is imported: together about 70 MiB of memory that the process and nspawn
// providers, `kiln up` and every embedder of the package would carry for nothing. The packages
// ship CommonJS, which is also what an `import` of them loads, so require() here gives the same
// classes (aws-sdk-client-mock matches commands by class).
import { createRequire } from 'node:module';
import type * as ClientEc2 from '@aws-sdk/client-ec2';
import type * as ClientElb from '@aws-sdk/client-elastic-load-balancing-v2';

const require = createRequire(import.meta.url);

let ec2: typeof ClientEc2 | undefined;
let elb: typeof ClientElb | undefined;

/** @aws-sdk/client-ec2 */
export const ec2Sdk = (): typeof ClientEc2 => (ec2 ??= require('@aws-sdk/client-ec2') as typeof ClientEc2);
/** @aws-sdk/client-elastic-load-balancing-v2 */
export const elbSdk = (): typeof ClientElb => (elb ??= require('@aws-sdk/client-elastic-load-balancing-v2') as typeof ClientElb);
