import path from 'node:path';
import { contentSha256, KilnError, formatBytes, formatTable, listReleases, parseDuration, promoteRelease, publishRelease, readPointer, showRelease, storedSize } from '@kiln/shared';
import { S3_OPTIONS, TRUST_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { list, openStore, out, printJson, signingKey, str, trustedKeys } from '../cli-context.js';
import { createProgress } from '../progress.js';

export const releasePush: CommandDef = {
  name: 'release push',
  summary: 'pack, sign and upload a release (a directory or a .tar.gz)',
  usage: 'release push DIR|FILE.tar.gz --app APP --version VERSION [--format 2|1] [options]',
  examples: ['kiln release push ./build --app shop --version 1.2.0', 'kiln release push shop.tar.gz --app shop --version 1.2.1 --port 8080 --health-path /healthz --env NODE_ENV=production'],
  details:
    'How the app runs comes from kiln.json at the top of the tree ({"service": {"command": [...], "port": N}, "health": {...}},\n' +
    'or "processes" with a "web" among them, "hooks" (beforeStart, validate, beforeStop) and "persist" directories: docs/app.md);\n' +
    'it is checked here and an error names the field at fault. The flags below replace fields of the main process.\n' +
    '--env is for values that belong to the build (the same on every fleet); per-fleet values and secrets are `kiln config set`.\n' +
    'A version that exists is refused: releases are immutable.\n' +
    'Format 2 (the default) stores every file content once by its sha256 and uploads only what the bucket lacks,\n' +
    'so a release that changes one file uploads about one file; hosts then fetch only what they lack too.\n' +
    'Format 1 (one .tar.gz) is for instances whose agent is older than 0.4.0 (docs/release-format.md).',
  options: {
    app: { type: 'string', value: 'APP', help: 'the app name (lower-case letters, digits, "-")' },
    version: { type: 'string', value: 'VERSION', help: 'the new version (letters, digits, ".", "_", "+", "-")' },
    key: { type: 'string', value: 'FILE', help: 'the signing key (default .kiln/keys/release.key; env KILN_RELEASE_KEY)' },
    command: { type: 'string', value: 'CMD', help: 'how the app runs, e.g. "node server.js" (split on spaces)' },
    port: { type: 'string', value: 'N', help: 'the port the app listens on (given to it as PORT)' },
    env: { type: 'string', multiple: true, value: 'K=V', help: 'an environment variable of the build, in the signed manifest (repeatable; never a secret)' },
    'health-path': { type: 'string', value: 'PATH', help: 'an HTTP path on the port that answers 2xx when healthy' },
    format: { type: 'string', value: 'N', help: '2 (default): contents by sha256, only new ones uploaded; 1: one .tar.gz for agents before 0.4.0' },
    ...S3_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [source]) {
    const app = str(flags, 'app');
    const version = str(flags, 'version');
    if (!app || !version) throw new KilnError('KILN_USAGE', 'release push needs --app and --version');
    const port = str(flags, 'port');
    if (port !== undefined && !/^\d+$/.test(port)) throw new KilnError('KILN_USAGE', `--port ${port}: a number from 1 to 65535`);
    const env: Record<string, string> = {};
    for (const kv of list(flags, 'env')) {
      const i = kv.indexOf('=');
      if (i < 1) throw new KilnError('KILN_USAGE', `--env ${kv}: use NAME=VALUE`);
      env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const format = str(flags, 'format') ?? '2';
    if (format !== '1' && format !== '2') throw new KilnError('KILN_USAGE', `--format ${format}: 2 (contents by sha256) or 1 (one .tar.gz, for agents before 0.4.0)`);
    const store = await openStore(flags, ctx);
    const key = await signingKey(flags, ctx);
    const progress = createProgress(ctx.io.stderr, ctx.json);
    const command = str(flags, 'command');
    const result = await publishRelease({
      store,
      app,
      version,
      source: path.resolve(ctx.io.cwd, source!),
      key,
      format: format === '1' ? 1 : 2,
      spec: {
        ...(command ? { command: command.split(' ').filter(Boolean) } : {}),
        ...(port ? { port: Number(port) } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(str(flags, 'health-path') ? { healthPath: str(flags, 'health-path') } : {}),
      },
      log: ctx.log,
      onPhase: (phase, detail) => progress.phase(`${phase}${detail ? ` ${detail}` : ''}`),
      onUploadProgress: (done, total) => progress.bytes(done, total),
    });
    progress.done();
    const m = result.manifest;
    const stored = m.schema === 1 ? { artifact: m.artifact } : { objects: m.content.objects.length, storedBytes: storedSize(m) };
    if (ctx.json) return printJson(ctx, { app: m.app, version: m.version, seq: m.seq, format: m.schema, ...stored, sha256: contentSha256(m), files: m.files.length, unpackedSize: m.unpackedSize, uploadedBytes: result.uploadedBytes, skippedBytes: result.skippedBytes, manifestSha256: result.manifestSha256, timings: result.timings });
    const what = m.schema === 1 ? `artifact ${formatBytes(m.artifact.size)}` : `uploaded ${formatBytes(result.uploadedBytes)}, skipped ${formatBytes(result.skippedBytes)} the bucket already held`;
    out(ctx, `published ${m.app} ${m.version} (seq ${m.seq}, format ${m.schema}): ${m.files.length} entries, ${formatBytes(m.unpackedSize)} unpacked, ${what}, sha256 ${contentSha256(m).slice(0, 12)}…`);
  },
};

export const releaseList: CommandDef = {
  name: 'release list',
  summary: "list an app's published releases",
  usage: 'release list APP [--json]',
  examples: ['kiln release list shop', 'kiln release list shop --bucket my-releases --prefix kiln/ --json'],
  options: { ...S3_OPTIONS, ...TRUST_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    const store = await openStore(flags, ctx);
    const releases = await listReleases(store, app!, await trustedKeys(flags, ctx));
    if (ctx.json) return printJson(ctx, releases);
    if (!releases.length) return out(ctx, `no releases of ${app} yet: publish one with \`kiln release push DIR --app ${app} --version V\``);
    out(ctx, formatTable(['VERSION', 'SEQ', 'CREATED', 'SIZE', 'FILES', 'SIGNATURE'], releases.map((r) => [r.version, String(r.seq), r.createdAt, formatBytes(r.size), String(r.files), r.verified ? 'ok' : 'UNTRUSTED'])));
  },
};

export const releaseShow: CommandDef = {
  name: 'release show',
  summary: 'show one release: artifact, service, health check',
  usage: 'release show APP VERSION [--json]',
  examples: ['kiln release show shop 1.2.0'],
  options: { ...S3_OPTIONS, ...TRUST_OPTIONS, ...JSON_OPTION },
  positionals: [2, 2],
  async run(ctx, flags, [app, version]) {
    const store = await openStore(flags, ctx);
    const { summary, manifest, manifestSha256 } = await showRelease(store, app!, version!, await trustedKeys(flags, ctx));
    if (ctx.json) return printJson(ctx, { ...summary, manifestSha256, manifest });
    const health = manifest.health.type === 'http' ? `GET :${manifest.health.port ?? manifest.service.port ?? '?'}${manifest.health.path} within ${manifest.health.timeoutMs} ms` : manifest.health.type === 'command' ? `${manifest.health.command.join(' ')} within ${manifest.health.timeoutMs} ms` : 'none';
    out(
      ctx,
      formatTable(
        ['FIELD', 'VALUE'],
        [
          ['app', manifest.app],
          ['version', manifest.version],
          ['seq', String(manifest.seq)],
          ['created', manifest.createdAt],
          ['signature', summary.verified ? 'ok (pinned key)' : 'UNTRUSTED: not signed by a pinned key'],
          ['format', String(manifest.schema)],
          manifest.schema === 1 ? ['artifact', `s3://${store.bucket}/${manifest.artifact.key}`] : ['content', `${manifest.content.objects.length} objects under s3://${store.bucket}/${store.objectKey(manifest.app, '0'.repeat(64)).slice(0, -64)}`],
          ['size', `${formatBytes(storedSize(manifest))} stored (${formatBytes(manifest.unpackedSize)} unpacked, ${manifest.files.length} entries)`],
          ['sha256', contentSha256(manifest)],
          ['manifest', manifestSha256],
          ['command', manifest.service.command.join(' ')],
          ['port', String(manifest.service.port ?? '-')],
          ['health', health],
          ...Object.entries(manifest.processes ?? {}).map(([name, p]) => [`process ${name}`, p.command.join(' ')]),
          ...Object.entries(manifest.hooks ?? {}).map(([name, h]) => [`hook ${name}`, `${h.command.join(' ')} within ${h.timeoutMs} ms${h.onBake ? ', also in bakes' : ''}`]),
          ...(manifest.persist?.length ? [['persist', manifest.persist.join(', ')]] : []),
        ],
      ),
    );
  },
};

export const releasePromote: CommandDef = {
  name: 'release promote',
  summary: 'point a channel at a release (a signed pointer with an expiry)',
  usage: 'release promote APP VERSION --channel CHANNEL [--ttl 30d]',
  examples: ['kiln release promote shop 1.2.0 --channel stable', 'kiln release promote shop 1.1.0 --channel stable --ttl 12h   # back to 1.1.0 with a new pointer'],
  details: 'To roll a channel back, promote the older version again: the new pointer gets a higher seq, so hosts accept it.',
  options: {
    channel: { type: 'string', value: 'CHANNEL', help: 'the channel, e.g. stable' },
    ttl: { type: 'string', value: 'DURATION', help: 'how long the pointer is valid: 90m, 12h, 30d (default 30d)' },
    key: { type: 'string', value: 'FILE', help: 'the signing key (default .kiln/keys/release.key; env KILN_RELEASE_KEY)' },
    ...S3_OPTIONS,
    ...TRUST_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [2, 2],
  async run(ctx, flags, [app, version]) {
    const channel = str(flags, 'channel');
    if (!channel) throw new KilnError('KILN_USAGE', 'release promote needs --channel');
    const ttlMs = parseDuration(str(flags, 'ttl') ?? '30d');
    if (!ttlMs) throw new KilnError('KILN_USAGE', `--ttl ${str(flags, 'ttl')}: use a duration like 90m, 12h or 30d`);
    const store = await openStore(flags, ctx);
    const pointer = await promoteRelease({ store, app: app!, version: version!, channel, key: await signingKey(flags, ctx), keys: await trustedKeys(flags, ctx), ttlMs });
    if (ctx.json) return printJson(ctx, pointer);
    out(ctx, `${pointer.app}/${pointer.channel} -> ${pointer.version} (pointer seq ${pointer.seq}, expires ${pointer.expires})`);
  },
};

export const releaseChannel: CommandDef = {
  name: 'release channel',
  summary: 'show where a channel points',
  usage: 'release channel APP CHANNEL [--json]',
  examples: ['kiln release channel shop stable'],
  options: { ...S3_OPTIONS, ...TRUST_OPTIONS, ...JSON_OPTION },
  positionals: [2, 2],
  async run(ctx, flags, [app, channel]) {
    const store = await openStore(flags, ctx);
    const pointer = await readPointer(store, app!, channel!, await trustedKeys(flags, ctx));
    if (ctx.json) return printJson(ctx, pointer);
    const expired = Date.parse(pointer.expires) <= Date.now() ? ' (EXPIRED)' : '';
    out(ctx, `${pointer.app}/${pointer.channel} -> ${pointer.version} (pointer seq ${pointer.seq}, expires ${pointer.expires}${expired})`);
  },
};
