import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { SSMClient } from '@aws-sdk/client-ssm';
import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { awsRequestHandler } from '../s3/s3-client.js';
import { hasErrno } from '../system/fs-errors.js';
import { MAX_CONFIG_VALUE_BYTES, splitSecretRef } from './config-schema.js';
import { secretsManagerSdk, ssmSdk } from './secret-sdk.js';

/** Where a host resolves its config's secret references. */
export interface SecretContext {
  /** the host's root: "/" on a real host, an instance's directory in tests; `file:` paths are read under it */
  root: string;
  /** the agent's environment, for `env:` references */
  env: NodeJS.ProcessEnv;
  /** clients for `aws-ssm:` and `aws-secretsmanager:`; made on first use (and closed after) when not given */
  ssm?: SSMClient;
  secretsManager?: SecretsManagerClient;
  /** the region of the clients made here (default: the SDK's own lookup, the instance's region on EC2) */
  region?: string;
}

/** A reference that did not resolve: why, and what to do, in words that never hold the value. */
const unresolved = (why: string) => new KilnError('KILN_SECRET_UNRESOLVED', why);

/** The errors a call to AWS fails with (an answer, a socket, no credentials), as opposed to a bug here. */
const NETWORK = ['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EPIPE'];
const isAwsFailure = (err: unknown) =>
  typeof err === 'object' && err !== null && ('$metadata' in err || hasErrno(err, ...NETWORK) || ['CredentialsProviderError', 'TimeoutError', 'ProviderError'].includes((err as Error).name));

/**
 * An AWS failure in the operator's terms: `hints` by the error's name say what to change (an IAM
 * permission, a missing parameter). AWS's own message never carries a secret's value.
 */
function awsProblem(err: unknown, service: string, hints: Record<string, string>): KilnError {
  if (!isAwsFailure(err)) throw err;
  const e = err as Error & { code?: string };
  if (hasErrno(err, ...NETWORK)) return unresolved(`cannot reach ${service} (${e.code}): the host needs a route to it (a NAT gateway or a VPC endpoint)`);
  if (e.name === 'CredentialsProviderError' || e.name === 'ProviderError') {
    return unresolved(`the host has no AWS credentials to ask ${service} with: give its instance an IAM role (or AWS_* variables in the agent's environment)`);
  }
  const hint = hints[e.name] ?? (/kms/i.test(e.name) ? hints.kms : undefined);
  return unresolved(`${service} answered ${e.name}${hint ? `: ${hint}` : ''}${e.message && e.message !== e.name ? ` (${e.message})` : ''}`);
}

/** The value's limits: what an environment variable can carry, and no more than a plain value. */
function checkValue(value: string): string {
  if (value.includes('\0')) throw unresolved('its value holds a NUL byte, which no environment variable can carry');
  const bytes = Buffer.byteLength(value);
  if (bytes > MAX_CONFIG_VALUE_BYTES) throw unresolved(`its value is ${bytes} bytes, over the ${MAX_CONFIG_VALUE_BYTES / 1024} KiB a config value may have`);
  return value;
}

async function readSecretFile(root: string, target: string): Promise<string> {
  const file = path.join(root, path.resolve('/', target));
  // O_NONBLOCK: a FIFO put where the file should be must not hang the install waiting for a writer.
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    if (hasErrno(err, 'ENOENT', 'ENOTDIR')) throw unresolved(`${file} does not exist on the host: create it there (mode 0600, owned by the app's user)`);
    if (hasErrno(err, 'EACCES', 'EPERM')) throw unresolved(`kiln cannot read ${file}: let the agent's user read it (its owner, mode 0600 or 0640)`);
    if (hasErrno(err, 'ELOOP', 'EISDIR', 'ENXIO')) throw unresolved(`${file} is not a regular file`);
    throw err;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw unresolved(`${file} is not a regular file`);
    if (st.mode & 0o004) throw unresolved(`${file} is readable by every user on the host: run \`chmod o-r ${file}\` (0600 or 0640), then deploy again`);
    // One trailing newline may follow the value (an editor's, `echo`'s): room for it, and a too-big file is not read.
    if (st.size > MAX_CONFIG_VALUE_BYTES + 2) throw unresolved(`${file} is ${st.size} bytes, over the ${MAX_CONFIG_VALUE_BYTES / 1024} KiB a config value may have`);
    return (await handle.readFile('utf8')).replace(/\r?\n$/, '');
  } finally {
    await handle.close();
  }
}

/**
 * The values of a fleet config's `secrets`, resolved on the host, by the same keys. Every reference
 * is tried; those that fail are reported together in one KILN_SECRET_UNRESOLVED that names each
 * key, its reference and what to do, and never a value.
 */
export async function resolveSecrets(secrets: Record<string, string>, ctx: SecretContext): Promise<Record<string, string>> {
  const made: Array<{ destroy(): void }> = [];
  let ssm = ctx.ssm;
  let secretsManager = ctx.secretsManager;
  const clientConfig = () => ({ ...(ctx.region ? { region: ctx.region } : {}), maxAttempts: 3, requestHandler: awsRequestHandler() });
  const ssmClient = (): SSMClient => (ssm ??= remember(new (ssmSdk().SSMClient)(clientConfig())));
  const smClient = (): SecretsManagerClient => (secretsManager ??= remember(new (secretsManagerSdk().SecretsManagerClient)(clientConfig())));
  function remember<C extends { destroy(): void }>(client: C): C {
    made.push(client);
    return client;
  }
  const where = ctx.region ? ` in ${ctx.region}` : '';

  async function resolve(ref: string): Promise<string> {
    const split = splitSecretRef(ref);
    if ('problem' in split) throw unresolved(split.problem);
    const { kind, target } = split;
    switch (kind) {
      case 'file':
        return readSecretFile(ctx.root, target);
      case 'env': {
        const value = ctx.env[target];
        if (value === undefined) throw unresolved(`the agent's environment has no ${target}: set it where the agent is started (its systemd unit's Environment= or EnvironmentFile=)`);
        return value;
      }
      case 'aws-ssm': {
        const { GetParameterCommand } = ssmSdk();
        let res;
        try {
          res = await ssmClient().send(new GetParameterCommand({ Name: target, WithDecryption: true }));
        } catch (err) {
          throw awsProblem(err, `SSM${where}`, {
            ParameterNotFound: `no parameter ${target}${where}: create it (\`aws ssm put-parameter --name ${target} --type SecureString --value …\`) or fix the reference`,
            ParameterVersionNotFound: `no such version of ${target}${where}`,
            AccessDeniedException: `the host's AWS role may not read ${target}: allow it ssm:GetParameter on the parameter (and kms:Decrypt on its key, for a SecureString)`,
            kms: `the host's AWS role may not decrypt ${target}: allow it kms:Decrypt on the parameter's KMS key`,
          });
        }
        const value = res.Parameter?.Value;
        if (value === undefined) throw unresolved(`SSM${where} returned no value for ${target}`);
        return value;
      }
      case 'aws-secretsmanager': {
        const { GetSecretValueCommand } = secretsManagerSdk();
        let res;
        try {
          res = await smClient().send(new GetSecretValueCommand({ SecretId: target }));
        } catch (err) {
          throw awsProblem(err, `Secrets Manager${where}`, {
            ResourceNotFoundException: `no secret ${target}${where}: create it (\`aws secretsmanager create-secret --name ${target} --secret-string …\`) or fix the reference`,
            AccessDeniedException: `the host's AWS role may not read ${target}: allow it secretsmanager:GetSecretValue on the secret (and kms:Decrypt on its key, for a customer-managed key)`,
            DecryptionFailure: `the host's AWS role may not decrypt ${target}: allow it kms:Decrypt on the secret's KMS key`,
            kms: `the host's AWS role may not decrypt ${target}: allow it kms:Decrypt on the secret's KMS key`,
            InvalidRequestException: `${target} cannot be read now (scheduled for deletion? restore it with \`aws secretsmanager restore-secret\`)`,
          });
        }
        if (res.SecretString === undefined) throw unresolved(`${target} holds a binary secret (SecretBinary): kiln reads text secrets (SecretString) only`);
        return res.SecretString;
      }
    }
  }

  try {
    const outcomes = await Promise.all(
      Object.entries(secrets).map(async ([key, ref]) => {
        try {
          return { key, value: checkValue(await resolve(ref)) };
        } catch (err) {
          if (!isKilnError(err, 'KILN_SECRET_UNRESOLVED')) throw err;
          // A malformed reference may be a value typed where its reference belongs: not repeated.
          return { key, ref: 'problem' in splitSecretRef(ref) ? 'not a reference' : ref, why: err.message };
        }
      }),
    );
    const failed = outcomes.filter((o) => 'why' in o);
    if (failed.length) {
      const lines = failed.map((f) => `${f.key} (${f.ref}): ${f.why}`);
      throw new KilnError('KILN_SECRET_UNRESOLVED', failed.length === 1 ? `secret ${lines[0]}` : `${failed.length} secrets not resolved: ${lines.join('; ')}`, {
        details: { unresolved: failed.map((f) => ({ key: f.key, ref: f.ref })) },
      });
    }
    return Object.fromEntries(outcomes.map((o) => [o.key, (o as { value: string }).value]));
  } finally {
    for (const c of made) c.destroy();
  }
}
