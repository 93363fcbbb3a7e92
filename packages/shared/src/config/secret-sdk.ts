// The AWS SDK's SSM and Secrets Manager modules, loaded on first use like the S3 ones (s3-sdk.ts):
// only a host whose config has an aws-ssm: or aws-secretsmanager: reference pays for loading them.
import { createRequire } from 'node:module';
import type * as ClientSecretsManager from '@aws-sdk/client-secrets-manager';
import type * as ClientSsm from '@aws-sdk/client-ssm';

const require = createRequire(import.meta.url);

let clientSsm: typeof ClientSsm | undefined;
let clientSecretsManager: typeof ClientSecretsManager | undefined;

/** @aws-sdk/client-ssm */
export const ssmSdk = (): typeof ClientSsm => (clientSsm ??= require('@aws-sdk/client-ssm') as typeof ClientSsm);
/** @aws-sdk/client-secrets-manager */
export const secretsManagerSdk = (): typeof ClientSecretsManager => (clientSecretsManager ??= require('@aws-sdk/client-secrets-manager') as typeof ClientSecretsManager);
