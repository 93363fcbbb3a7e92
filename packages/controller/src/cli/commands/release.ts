import path from 'node:path';
import {
  applyPrune,
  checkName,
  contentSha256,
  createDocStore,
  createReleaseStore,
  createS3Client,
  DEFAULT_KEEP,
  isKilnError,
  KilnError,
  formatBytes,
  formatTable,
  listReleases,
  parseDuration,
  planPrune,
  promoteRelease,
  publishRelease,
  readPointer,
  showRelease,
  storedSize,
  type DocStore,
  type Logger,
} from '@kiln/shared';
import { createFleetRegistry } from '../../fleets/fleet-registry.js';
import { S3_OPTIONS, TRUST_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { intFlag, list, note, openStore, out, printJson, resolveLocation, signingKey, str, trustedKeys } from '../cli-context.js';
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

export const releasePrune: CommandDef = {
  name: 'release prune',
  summary: "delete an app's old releases and the contents only they used",
  usage: 'release prune APP [--keep N] [--grace DURATION] [--dry-run] [--json]',
  examples: ['kiln release prune shop --dry-run', 'kiln release prune shop --keep 10', 'kiln release prune shop --bucket my-releases --prefix kiln/ --json'],
  details:
    'Kept: the N releases of highest seq (--keep, default 5), every release a channel pointer names (bakes\' channels too),\n' +
    "and, for each fleet of the app, its desired release, the one `kiln rollback` goes back to and each group's image release\n" +
    '(read from the fleet records in the bucket: no controller needs to run). A release whose manifest cannot be read is kept\n' +
    'and said so; if it might name content objects, no object is deleted. Everything else goes: each release (its manifest\n' +
    'first, then its signature and artifact), then every content object no kept release names. A channel pointer or fleet\n' +
    'record that does not parse stops prune before it deletes anything.\n' +
    'A push uploads its contents before its manifest: objects uploaded within the last hour stay (--grace) so a push under\n' +
    'way keeps them. Known limit: a push that starts while prune runs may name a content of a release prune is removing;\n' +
    'run prune from the one place that pushes (a CI job), not beside a push.',
  options: {
    keep: { type: 'string', value: 'N', help: `keep the N newest releases (by seq) besides those something names (default ${DEFAULT_KEEP}, at least 1)` },
    grace: { type: 'string', value: 'DURATION', help: 'keep content objects uploaded less than this long ago, e.g. 30m (default 1h; 0 for none)' },
    'dry-run': { type: 'boolean', help: 'print what would go and delete nothing' },
    ...S3_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, 1],
  async run(ctx, flags, [app]) {
    checkName('app', app!);
    const keep = intFlag(flags, 'keep', 1, 1_000_000) ?? DEFAULT_KEEP;
    const dryRun = flags['dry-run'] === true;
    const loc = await resolveLocation(flags, ctx);
    const client = createS3Client(loc);
    const store = createReleaseStore(client, loc.bucket, loc.prefix);
    const protect = await fleetReleases(createDocStore(client, loc.bucket, loc.prefix), app!, ctx.log);
    const graceFlag = str(flags, 'grace');
    const graceMs = graceFlag === undefined ? undefined : parseDuration(graceFlag);
    if (graceFlag !== undefined && graceMs === undefined) throw new KilnError('KILN_USAGE', `--grace ${graceFlag}: a duration such as 30m, 1h or 0`);
    const plan = await planPrune(store, app!, { keep, protect, ...(graceMs !== undefined ? { graceMs } : {}) });
    for (const m of plan.missing) note(ctx, `warning: ${m.version} is not in the bucket, yet wanted by ${m.why}`);
    if (plan.objectsHeld) note(ctx, `no content object is deleted: ${plan.objectsHeld}`);
    if (ctx.json && dryRun) return printJson(ctx, { ...plan, dryRun });
    if (!ctx.json) {
      const rows = [...plan.keep.map((r) => ({ ...r, action: 'keep', text: r.why.join(', ') })), ...plan.remove.map((r) => ({ ...r, action: dryRun ? 'would remove' : 'remove', text: r.why }))];
      rows.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.version.localeCompare(b.version));
      if (rows.length) out(ctx, formatTable(['VERSION', 'SEQ', 'ACTION', 'WHY'], rows.map((r) => [r.version, r.seq === null ? '-' : String(r.seq), r.action, r.text])));
    }
    const what = `${plan.remove.length} release${plan.remove.length === 1 ? '' : 's'} and ${plan.objects.length} content object${plan.objects.length === 1 ? '' : 's'}, ${formatBytes(plan.bytes)}`;
    if (dryRun) return out(ctx, `dry run: would remove ${what}; nothing deleted`);
    if (!plan.remove.length && !plan.objects.length) {
      if (ctx.json) return printJson(ctx, { ...plan, dryRun, result: { releases: [], objects: 0, bytes: 0, spared: { releases: [], objects: 0 } } });
      return out(ctx, `nothing to prune: ${plan.keep.length} release${plan.keep.length === 1 ? '' : 's'} of ${app} kept`);
    }
    const progress = createProgress(ctx.io.stderr, ctx.json);
    progress.phase(`removing ${what}`);
    const result = await applyPrune(store, app!, plan, (p) => progress.status(`removing ${p.phase}: ${p.done}/${p.total}`));
    progress.done();
    if (result.spared.releases.length) note(ctx, `kept after all (a channel named them meanwhile): ${result.spared.releases.join(', ')}`);
    if (result.spared.objects) note(ctx, `kept ${result.spared.objects} object${result.spared.objects === 1 ? '' : 's'} a release published meanwhile names`);
    if (ctx.json) return printJson(ctx, { ...plan, dryRun, result });
    out(ctx, `removed ${result.releases.length} release${result.releases.length === 1 ? '' : 's'} and ${result.objects} content object${result.objects === 1 ? '' : 's'}: ${formatBytes(result.bytes)} freed`);
  },
};

/**
 * What the app's fleets need, from their records in the bucket (read only): each one's desired
 * release, the one a rollback goes back to, and the release of each group's image. A record that
 * does not parse stops prune: the registry would skip it, and with it what its fleet needs.
 */
async function fleetReleases(docs: DocStore, app: string, log: Logger): Promise<Map<string, string>> {
  const unreadable: string[] = [];
  const readOnly: DocStore = {
    async get(key, schema) {
      try {
        return await docs.get(key, schema);
      } catch (err) {
        if (isKilnError(err, 'KILN_STATE_INVALID')) unreadable.push(key);
        throw err;
      }
    },
    list: (prefix) => docs.list(prefix),
    put: () => Promise.reject(new Error('release prune never writes a fleet record')),
    remove: () => Promise.reject(new Error('release prune never removes a fleet record')),
  };
  const registry = createFleetRegistry({ docs: readOnly, log, now: () => new Date() });
  await registry.load();
  if (unreadable.length) {
    throw new KilnError('KILN_STATE_INVALID', `the fleet record ${unreadable.join(', ')} does not parse: prune cannot tell which releases that fleet needs, and deletes nothing; repair or remove the record (the controller skips it too), then prune again`);
  }
  const wants = new Map<string, string>();
  const add = (version: string, why: string) => wants.set(version, wants.has(version) ? `${wants.get(version)}, ${why}` : why);
  for (const f of registry.list().filter((f) => f.app === app)) {
    if (f.desired) add(f.desired.version, `fleet ${f.name} desired`);
    const back = f.history.at(-1);
    if (back) add(back.version, `fleet ${f.name} rollback`);
    for (const g of f.groups) if (g.release) add(g.release.version, `fleet ${f.name} image ${g.image} (${g.name}, ${g.state})`);
  }
  return wants;
}
