// Secret references resolved on a host: real files under a temp root (modes, absence), a real
// environment; SSM and Secrets Manager through real SDK clients whose `send` aws-sdk-client-mock
// stubs (no AWS here). Whatever fails, the error names the key and the reference, never a value.
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { GetSecretValueCommand, ResourceNotFoundException, SecretsManagerClient, SecretsManagerServiceException } from '@aws-sdk/client-secrets-manager';
import { GetParameterCommand, ParameterNotFound, SSMClient, SSMServiceException } from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveSecrets, type KilnError, type SecretContext } from '@kiln/shared';
import { tempDir } from '../helpers/release.js';

const credentials = { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'not-a-real-key' };
const VALUE = 'Sup3r-s3cret-value-9f1c';

let root: string;

/** The KilnError `resolveSecrets` fails with; its message must not hold any of the values the test planted. */
async function refusal(secrets: Record<string, string>, ctx: SecretContext): Promise<KilnError> {
  const err = (await resolveSecrets(secrets, ctx).then(() => undefined, (e: unknown) => e)) as KilnError | undefined;
  if (!err) throw new Error('expected a failure');
  expect(err.code, err.message).toBe('KILN_SECRET_UNRESOLVED');
  expect(err.message).not.toContain(VALUE);
  expect(JSON.stringify(err.toJSON())).not.toContain(VALUE);
  return err;
}

beforeAll(async () => {
  root = await tempDir('kiln-secrets-');
  await mkdir(path.join(root, 'etc/shop'), { recursive: true });
});

afterAll(() => rm(root, { recursive: true, force: true }));

describe('file: references', () => {
  it('reads a 0600 file under the root, dropping one trailing newline', async () => {
    await writeFile(path.join(root, 'etc/shop/db-password'), `${VALUE}\n`, { mode: 0o600 });
    await writeFile(path.join(root, 'etc/shop/two-lines'), 'line1\nline2\n\n', { mode: 0o640 });
    await writeFile(path.join(root, 'etc/shop/crlf'), 'windows\r\n', { mode: 0o600 });
    const got = await resolveSecrets({ DB_PASSWORD: 'file:/etc/shop/db-password', MULTI: 'file:/etc/shop/two-lines', CRLF: 'file:/etc/shop/crlf' }, { root, env: {} });
    expect(got).toEqual({ DB_PASSWORD: VALUE, MULTI: 'line1\nline2\n', CRLF: 'windows' });
    // A path climbing out with .. stays under the root.
    expect(await resolveSecrets({ P: 'file:/../../etc/shop/db-password' }, { root, env: {} })).toEqual({ P: VALUE });
  });

  it('refuses a world-readable file, saying to chmod o-r it, and never shows its content', async () => {
    const file = path.join(root, 'etc/shop/open');
    await writeFile(file, VALUE);
    await chmod(file, 0o644);
    const err = await refusal({ DB_PASSWORD: 'file:/etc/shop/open' }, { root, env: {} });
    expect(err.message).toBe(`secret DB_PASSWORD (file:/etc/shop/open): ${file} is readable by every user on the host: run \`chmod o-r ${file}\` (0600 or 0640), then deploy again`);
    expect(err.details).toEqual({ unresolved: [{ key: 'DB_PASSWORD', ref: 'file:/etc/shop/open' }] });
  });

  it('refuses a missing file, a directory and a FIFO (without hanging on it)', async () => {
    await mkfifo(path.join(root, 'etc/shop/fifo'));
    const err = await refusal({ GONE: 'file:/etc/shop/gone', DIR: 'file:/etc/shop', FIFO: 'file:/etc/shop/fifo' }, { root, env: {} });
    expect(err.message).toMatch(/^3 secrets not resolved: /);
    expect(err.message).toContain(`GONE (file:/etc/shop/gone): ${path.join(root, 'etc/shop/gone')} does not exist on the host: create it there (mode 0600`);
    expect(err.message).toContain(`DIR (file:/etc/shop): ${path.join(root, 'etc/shop')} is not a regular file`);
    expect(err.message).toContain(`FIFO (file:/etc/shop/fifo): ${path.join(root, 'etc/shop/fifo')} is not a regular file`);
  });
});

/** Node has no mkfifo: the system's, which every Linux host has. */
async function mkfifo(file: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  await new Promise<void>((resolve, reject) => execFile('mkfifo', [file], (err) => (err ? reject(err) : resolve())));
}

describe('env: references', () => {
  it("reads the agent's environment; a variable it lacks is an error naming it", async () => {
    expect(await resolveSecrets({ TOKEN: 'env:SHOP_TOKEN', EMPTY: 'env:SHOP_EMPTY' }, { root, env: { SHOP_TOKEN: VALUE, SHOP_EMPTY: '' } })).toEqual({ TOKEN: VALUE, EMPTY: '' });
    const err = await refusal({ TOKEN: 'env:SHOP_TOKEN', OTHER: 'env:SHOP_OTHER' }, { root, env: { SHOP_TOKEN: VALUE } });
    expect(err.message).toMatch(/^secret OTHER \(env:SHOP_OTHER\): the agent's environment has no SHOP_OTHER: set it where the agent is started/);
  });

  it('does not repeat a malformed reference (it may be the value itself) and refuses a value no environment variable can carry', async () => {
    const err = await refusal({ DB_PASSWORD: VALUE }, { root, env: {} });
    expect(err.message).toMatch(/^secret DB_PASSWORD \(not a reference\): not a secret reference: use one of file:/);
    await refusal({ BIN: 'env:BIN' }, { root, env: { BIN: `a\0${VALUE}` } });
  });
});

describe('aws-ssm: references', () => {
  const ssm = new SSMClient({ region: 'eu-west-1', credentials });
  const stub = mockClient(ssm);

  it('asks for the parameter decrypted', async () => {
    stub.reset();
    stub.on(GetParameterCommand, { Name: '/shop/db-password', WithDecryption: true }).resolves({ Parameter: { Name: '/shop/db-password', Value: VALUE, Type: 'SecureString' } });
    expect(await resolveSecrets({ DB_PASSWORD: 'aws-ssm:/shop/db-password' }, { root, env: {}, ssm, region: 'eu-west-1' })).toEqual({ DB_PASSWORD: VALUE });
    expect(stub.commandCalls(GetParameterCommand)[0]!.args[0].input).toEqual({ Name: '/shop/db-password', WithDecryption: true });
  });

  it('says what to do when the parameter is missing or the host may not read it', async () => {
    stub.reset();
    stub.on(GetParameterCommand, { Name: '/shop/gone' }).rejects(new ParameterNotFound({ message: '', $metadata: { httpStatusCode: 400 } }));
    stub.on(GetParameterCommand, { Name: '/shop/locked' }).rejects(
      new SSMServiceException({ name: 'AccessDeniedException', $fault: 'client', $metadata: { httpStatusCode: 400 }, message: 'User: arn:aws:sts::123456789012:assumed-role/web/i-1 is not authorized to perform: ssm:GetParameter' }),
    );
    const err = await refusal({ GONE: 'aws-ssm:/shop/gone', LOCKED: 'aws-ssm:/shop/locked' }, { root, env: {}, ssm, region: 'eu-west-1' });
    expect(err.message).toContain('GONE (aws-ssm:/shop/gone): SSM in eu-west-1 answered ParameterNotFound: no parameter /shop/gone in eu-west-1: create it (`aws ssm put-parameter --name /shop/gone --type SecureString');
    expect(err.message).toContain('LOCKED (aws-ssm:/shop/locked): SSM in eu-west-1 answered AccessDeniedException: the host\'s AWS role may not read /shop/locked: allow it ssm:GetParameter');
    expect(err.message).toContain('is not authorized to perform: ssm:GetParameter');
  });

  it('tells an unreachable SSM and a host without AWS credentials apart', async () => {
    stub.reset();
    stub.on(GetParameterCommand, { Name: '/shop/far' }).rejects(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
    stub.on(GetParameterCommand, { Name: '/shop/anon' }).rejects(Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' }));
    const err = await refusal({ FAR: 'aws-ssm:/shop/far', ANON: 'aws-ssm:/shop/anon' }, { root, env: {}, ssm });
    expect(err.message).toContain('FAR (aws-ssm:/shop/far): cannot reach SSM (ECONNREFUSED): the host needs a route to it');
    expect(err.message).toContain('ANON (aws-ssm:/shop/anon): the host has no AWS credentials to ask SSM with: give its instance an IAM role');
  });

  it('makes its own client when given none, and closes it after', async () => {
    // The class's send stubbed: every client made from it answers from here.
    const classStub = mockClient(SSMClient);
    try {
      classStub.on(GetParameterCommand).resolves({ Parameter: { Value: VALUE } });
      expect(await resolveSecrets({ A: 'aws-ssm:/shop/a' }, { root, env: {}, region: 'eu-west-1' })).toEqual({ A: VALUE });
      expect(classStub.commandCalls(GetParameterCommand)).toHaveLength(1);
    } finally {
      classStub.restore();
    }
  });
});

describe('aws-secretsmanager: references', () => {
  const sm = new SecretsManagerClient({ region: 'eu-west-1', credentials });
  const stub = mockClient(sm);
  const arn = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/api-key-AbCdEf';

  it('reads the SecretString, by name or ARN', async () => {
    stub.reset();
    stub.on(GetSecretValueCommand, { SecretId: 'shop/api-key' }).resolves({ SecretString: VALUE });
    stub.on(GetSecretValueCommand, { SecretId: arn }).resolves({ SecretString: 'by-arn' });
    expect(await resolveSecrets({ API_KEY: 'aws-secretsmanager:shop/api-key', BY_ARN: `aws-secretsmanager:${arn}` }, { root, env: {}, secretsManager: sm })).toEqual({ API_KEY: VALUE, BY_ARN: 'by-arn' });
  });

  it('says what to do when the secret is missing, the host may not read it, or it is binary', async () => {
    stub.reset();
    stub.on(GetSecretValueCommand, { SecretId: 'shop/gone' }).rejects(new ResourceNotFoundException({ message: "Secrets Manager can't find the specified secret.", $metadata: { httpStatusCode: 400 } }));
    stub.on(GetSecretValueCommand, { SecretId: 'shop/locked' }).rejects(
      new SecretsManagerServiceException({ name: 'AccessDeniedException', $fault: 'client', $metadata: { httpStatusCode: 400 }, message: 'not authorized to perform: secretsmanager:GetSecretValue' }),
    );
    stub.on(GetSecretValueCommand, { SecretId: 'shop/binary' }).resolves({ SecretBinary: Buffer.from(VALUE) });
    const err = await refusal({ GONE: 'aws-secretsmanager:shop/gone', LOCKED: 'aws-secretsmanager:shop/locked', BIN: 'aws-secretsmanager:shop/binary' }, { root, env: {}, secretsManager: sm });
    expect(err.message).toContain('GONE (aws-secretsmanager:shop/gone): Secrets Manager answered ResourceNotFoundException: no secret shop/gone: create it (`aws secretsmanager create-secret --name shop/gone');
    expect(err.message).toContain('LOCKED (aws-secretsmanager:shop/locked): Secrets Manager answered AccessDeniedException: the host\'s AWS role may not read shop/locked: allow it secretsmanager:GetSecretValue');
    expect(err.message).toContain('BIN (aws-secretsmanager:shop/binary): shop/binary holds a binary secret (SecretBinary): kiln reads text secrets (SecretString) only');
  });
});
