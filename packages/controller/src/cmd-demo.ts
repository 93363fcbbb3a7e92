import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  KilnError,
  appLayout,
  createProcessSupervisor,
  createReleaseStore,
  createS3Client,
  generateReleaseKeyPair,
  install,
  parsePrivateKey,
  parsePublicKey,
  promoteRelease,
  publishRelease,
  rollback,
} from '@kiln/shared';
import type { CommandDef } from './cli-command.js';
import { out } from './cli-context.js';
import { startEmbeddedS3 } from './embedded-s3.js';
import { freePort } from './free-port.js';

const DEMO_APP = fileURLToPath(new URL('../demo-app/', import.meta.url));

async function get(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  return (await res.text()).trim();
}

export const demoCommand: CommandDef = {
  name: 'demo',
  summary: 'run the whole publish → install → upgrade in place → rollback story on local defaults',
  usage: 'demo [--keep]',
  details: 'Starts an embedded S3 on 127.0.0.1, publishes two versions of a sample HTTP app, installs, upgrades in place and rolls back, all in a temporary directory.',
  options: { keep: { type: 'boolean', help: 'leave the temporary directory (and nothing running) for a look afterwards' } },
  positionals: [0, 0],
  async run(ctx, flags) {
    const work = await mkdtemp(path.join(tmpdir(), 'kiln-demo-'));
    const root = path.join(work, 'host');
    const app = 'kiln-demo';
    const started = Date.now();
    let t = Date.now();
    const step = (text: string) => {
      out(ctx, ` ✓ ${String(Date.now() - t).padStart(5)} ms  ${text}`);
      t = Date.now();
    };
    const show = (text: string) => out(ctx, `     ${text}`);
    out(ctx, `kiln demo: one install routine, from publish to rollback (work dir ${work})`);

    const s3 = await startEmbeddedS3({ directory: path.join(work, 's3'), bucket: 'kiln' });
    const port = await freePort();
    const service = createProcessSupervisor({ appDir: appLayout(root, app).appDir, log: ctx.log, env: { PORT: String(port) } });
    try {
      step(`embedded S3 on ${s3.location.endpoint}`);
      const store = createReleaseStore(createS3Client(s3.location), s3.location.bucket);
      const pair = generateReleaseKeyPair();
      const key = parsePrivateKey(pair.privatePem, 'demo key');
      const keys = [parsePublicKey(pair.publicPem, 'demo key')];
      step(`release signing key ${pair.keyId}`);

      const publish = async (version: string) => {
        const dir = path.join(work, `app-${version}`);
        await cp(DEMO_APP, dir, { recursive: true });
        await writeFile(path.join(dir, 'VERSION'), `${version}\n`);
        const { manifest } = await publishRelease({ store, app, version, source: dir, key, log: ctx.log });
        await promoteRelease({ store, app, version, channel: 'stable', key, keys, ttlMs: 3_600_000 });
        step(`pushed ${app} ${version} (seq ${manifest.seq}) and promoted it to stable`);
      };
      const base = { root, app, store, keys, service, log: ctx.log, port };
      const expectServing = async (version: string) => {
        const body = await get(`http://127.0.0.1:${port}/`);
        show(`GET http://127.0.0.1:${port}/ -> ${body}`);
        if (!body.includes(` ${version} `)) throw new KilnError('KILN_HEALTH_FAILED', `the demo app should serve ${version} but answered: ${body}`);
      };

      await publish('v1');
      const r1 = await install({ ...base, target: { channel: 'stable' } });
      step(`installed ${r1.version} into ${root}, started, healthy`);
      await expectServing('v1');

      await publish('v2');
      const r2 = await install({ ...base, target: { channel: 'stable' } });
      step(`installed ${r2.version} in place over ${r2.previous} (swap, restart, health gate)`);
      await expectServing('v2');

      const r3 = await install({ ...base, target: { channel: 'stable' } });
      step(`installed stable again: ${r3.outcome} (idempotent, no download)`);

      const r4 = await rollback(base);
      step(`rolled back to ${r4.version} (from disk, re-verified, health-gated)`);
      await expectServing('v1');
    } finally {
      await service.stop().catch(() => undefined);
      await s3.close().catch(() => undefined);
      if (!flags.keep) await rm(work, { recursive: true, force: true });
    }
    step(flags.keep ? `stopped the app and S3; kept ${work}` : 'stopped the app and S3, removed the work dir');
    out(ctx, `done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  },
};
