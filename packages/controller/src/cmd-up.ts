import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, createS3Client, writeFileAtomic } from '@kiln/shared';
import { ListBucketsCommand } from '@aws-sdk/client-s3';
import type { CommandDef } from './cli-command.js';
import { localS3File, out, str } from './cli-context.js';
import { startEmbeddedS3 } from './embedded-s3.js';

async function alreadyRunning(file: string): Promise<string | undefined> {
  try {
    const loc = JSON.parse(await readFile(file, 'utf8'));
    await createS3Client(loc, { maxAttempts: 1, connectTimeoutMs: 500 }).send(new ListBucketsCommand({}));
    return loc.endpoint as string;
  } catch {
    return undefined;
  }
}

export const upCommand: CommandDef = {
  name: 'up',
  summary: 'run the embedded S3 endpoint on 127.0.0.1 (stays in the foreground)',
  usage: 'up [--port N] [--data DIR] [--bucket NAME]',
  details: 'Other kiln commands run in the same directory find it through .kiln/s3.json. Stop it with Ctrl-C.',
  options: {
    port: { type: 'string', value: 'N', help: 'the port (default: a free one)' },
    data: { type: 'string', value: 'DIR', help: 'where objects are kept (default .kiln/s3)' },
    bucket: { type: 'string', value: 'NAME', help: 'the bucket to create (default "kiln")' },
  },
  positionals: [0, 0],
  async run(ctx, flags) {
    const file = localS3File(ctx.home);
    const running = await alreadyRunning(file);
    if (running) throw new KilnError('KILN_USAGE', `a local S3 already runs at ${running} for ${ctx.home}; stop it first`);
    const port = str(flags, 'port');
    if (port !== undefined && !/^\d+$/.test(port)) throw new KilnError('KILN_USAGE', `--port ${port}: a number`);
    const s3 = await startEmbeddedS3({
      directory: path.resolve(ctx.io.cwd, str(flags, 'data') ?? path.join(ctx.home, 's3')),
      bucket: str(flags, 'bucket') ?? 'kiln',
      port: port ? Number(port) : 0,
    });
    await writeFileAtomic(file, JSON.stringify(s3.location, null, 2) + '\n', 0o600);
    out(
      ctx,
      [
        `kiln S3 endpoint  ${s3.location.endpoint}`,
        `bucket            ${s3.location.bucket}`,
        `credentials       ${s3.location.accessKeyId} / ${s3.location.secretAccessKey} (local only)`,
        `written to        ${file} (kiln commands in this directory use it)`,
        'press Ctrl-C to stop',
      ].join('\n'),
    );
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await rm(file, { force: true });
    await s3.close();
    out(ctx, 'stopped');
  },
};
