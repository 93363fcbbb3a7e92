// A controller in a process of its own, for tests that kill it: `node controller-main.mjs OPTIONS.json`.
// Prints "listening PORT" once it serves (port 0 in the options: the kernel picks one).
import { readFile } from 'node:fs/promises';
import { buildServer } from '@kiln/controller';
import { createLogger, createS3Client, parsePrivateKey, parsePublicKey } from '@kiln/shared';

const o = JSON.parse(await readFile(process.argv[2], 'utf8'));
const server = await buildServer({
  log: createLogger({ level: o.logLevel ?? 'silent' }),
  s3: createS3Client(o.s3),
  bucket: o.s3.bucket,
  operatorTokens: [o.operatorToken],
  signingKey: parsePrivateKey(o.privatePem, 'the test signing key'),
  trustedKeys: [parsePublicKey(o.publicPem, 'the test public key')],
  heartbeatMs: o.heartbeatMs,
});
await server.listen({ host: '127.0.0.1', port: o.port });
process.stdout.write(`listening ${server.server.address().port}\n`);
