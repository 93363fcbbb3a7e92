// The controller as `kiln up` builds it, for the benchmarks that drive a provider: buildServer on the
// embedded S3 with one operator token, listening on 127.0.0.1 on a free port.
import { randomBytes } from 'node:crypto';
import { createS3Client } from '@kiln/shared';
import { buildServer } from '@kiln/controller';

/** Returns the listening fastify server; `server.close()` stops it. */
export async function startBenchController({ log, s3, signingKey, trustedKeys, operator, provider, serviceManager }) {
  const server = await buildServer({
    log,
    s3: createS3Client(s3.location),
    bucket: s3.location.bucket,
    prefix: s3.location.prefix,
    operatorTokens: [operator],
    signingKey,
    trustedKeys,
    launch: { provider, agentSecret: randomBytes(32), s3: s3.location, serviceManager },
  });
  await server.listen({ host: '127.0.0.1', port: 0 });
  return server;
}
