import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Message, Plugin } from 'esbuild';
import { KilnError, Sha256, checkName, createDocStore, s3Objects, writeFileAtomic, type Logger } from '@kiln/shared';
import { z } from 'zod';

/** What `kiln agent bundle` writes: the agent as one executable file, and its systemd unit beside it. */
export interface AgentBundle {
  /** the bundle, `kiln-agent.mjs` (installed in an image as /usr/local/bin/kiln-agent) */
  file: string;
  /** `kiln-agent.service`, the agent package's unit as is */
  unit: string;
  /** of the file */
  sha256: string;
  bytes: number;
  /** the agent package version and a short hash over the file and its unit: `0.1.0-1a2b3c4d5e6f` */
  version: string;
}

export interface BuildAgentBundleOptions {
  outDir: string;
  log?: Logger;
}

// The agent package's files, found the way Node finds the package (a workspace link or node_modules).
const AGENT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.resolve('@kiln/agent'))), '..');
const AGENT_MAIN = path.join(AGENT_DIR, 'dist/main.js');
const AGENT_UNIT = path.join(AGENT_DIR, 'units/kiln-agent.service');
const SHARED_DIST = path.dirname(fileURLToPath(import.meta.resolve('@kiln/shared')));
// The process supervisor's daemon entry, which createProcessSupervisor runs as `node supervisor-main.js --app-dir DIR`.
const SUPERVISOR_MAIN = fileURLToPath(import.meta.resolve('@kiln/shared/supervisor'));

export const AGENT_BUNDLE_FILE = 'kiln-agent.mjs';
export const AGENT_UNIT_FILE = 'kiln-agent.service';

// ESM output cannot `require`: CommonJS dependencies (the AWS SDK, ws, pino) call it for Node's
// built-ins, so the bundle makes one. The hashbang lets the file run as /usr/local/bin/kiln-agent.
const BANNER = "#!/usr/bin/env node\nimport { createRequire as __kilnCreateRequire } from 'node:module'; const require = __kilnCreateRequire(import.meta.url);";

// One file, two programs: the agent, and the process supervisor's daemon, which the agent starts as
// `node <this file> --app-dir DIR` (there is no supervisor-main.js beside the bundle to run instead).
const ENTRY = `if (process.argv[2] === '--app-dir') await import(${JSON.stringify(SUPERVISOR_MAIN)});\nelse await import(${JSON.stringify(AGENT_MAIN)});\n`;

// Native accelerators ws loads in a try/catch: left out, ws falls back to JavaScript. Marked external so
// that a machine which happens to have them installed does not bundle their loader of a .node file.
const OPTIONAL_NATIVE = ['bufferutil', 'utf-8-validate'];

/**
 * kiln's own modules reach files at run time beside themselves; in the bundle there is nothing beside it.
 * - `createRequire(import.meta.url)` + `require('pkg')` (the lazily loaded AWS SDK): dropping the local
 *   `require` leaves esbuild a plain require() to bundle, still loaded on first use.
 * - the supervisor daemon's entry: the bundle itself (see ENTRY).
 */
const REWRITES: Array<[from: RegExp, to: string]> = [
  [/^const require = createRequire\(import\.meta\.url\);$/m, ''],
  [/new URL\('\.\/supervisor-main\.js', import\.meta\.url\)/, 'new URL(import.meta.url)'],
];

// What would still need a file beside the bundle: a createRequire (other than the banner's) or a sibling URL.
const LEFT_BEHIND = [/\bcreateRequire\(import\.meta\.url\)/g, /new URL\(\s*["'`]\.{1,2}\/[^"'`]*["'`]\s*,\s*import\.meta\.url\s*\)/g];

const kilnRewrites = (dirs: string[]): Plugin => ({
  name: 'kiln-rewrites',
  setup(b) {
    const escape = (d: string) => (d + path.sep).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    b.onLoad({ filter: new RegExp(`^(${dirs.map(escape).join('|')}).*\\.js$`) }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      const contents = REWRITES.reduce((t, [from, to]) => t.replace(from, to), text);
      return contents === text ? undefined : { contents, loader: 'js' };
    });
  },
});

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const formatMessages = (msgs: Message[]) => msgs.map((m) => `${m.location ? `${m.location.file}:${m.location.line}: ` : ''}${m.text}`).join('; ');

/** Bundles the built agent (packages/agent/dist) and everything it imports into OUT/kiln-agent.mjs, which runs with Node alone. */
export async function buildAgentBundle(opts: BuildAgentBundleOptions): Promise<AgentBundle> {
  const log = opts.log?.child({ module: 'agent-bundle' });
  const started = Date.now();
  const pkg = await readFile(path.join(AGENT_DIR, 'package.json'), 'utf8').then((t) => JSON.parse(t) as { version: string });
  const unitText = await readFile(AGENT_UNIT).catch((cause: Error) => {
    throw new KilnError('KILN_AGENT_BUNDLE_FAILED', `cannot read the agent's unit ${AGENT_UNIT}: ${cause.message}`, { cause });
  });
  await readFile(AGENT_MAIN).catch((cause: Error) => {
    throw new KilnError('KILN_AGENT_BUNDLE_FAILED', `the agent is not built (${AGENT_MAIN}: ${cause.message}): run \`npm run build\` first`, { cause });
  });

  const { build } = await import('esbuild');
  let result;
  try {
    result = await build({
      stdin: { contents: ENTRY, resolveDir: AGENT_DIR, sourcefile: 'kiln-agent-entry.js', loader: 'js' },
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'esm',
      banner: { js: BANNER },
      external: OPTIONAL_NATIVE,
      plugins: [kilnRewrites([path.join(AGENT_DIR, 'dist'), SHARED_DIST])],
      // Paths in the bundle's comments are relative to this, so the same checkout layout gives the same bytes.
      absWorkingDir: path.resolve(AGENT_DIR, '../..'),
      write: false,
      logLevel: 'silent',
    });
  } catch (cause) {
    const errors = (cause as { errors?: Message[] }).errors;
    throw new KilnError('KILN_AGENT_BUNDLE_FAILED', `esbuild could not bundle the agent: ${errors?.length ? formatMessages(errors) : (cause as Error).message}`, { cause });
  }
  if (result.warnings.length) log?.warn({ warnings: formatMessages(result.warnings) }, 'esbuild warned while bundling the agent');
  const code = result.outputFiles[0]!.contents;

  const text = Buffer.from(code).toString('utf8');
  const stray = LEFT_BEHIND.flatMap((re) => text.match(re) ?? []);
  if (stray.length) throw new KilnError('KILN_AGENT_BUNDLE_FAILED', `the bundle would need files beside it at run time (${[...new Set(stray)].join(', ')}): teach agent-bundle.ts to bundle them`);

  const digest = sha256(code);
  const version = `${pkg.version}-${createHash('sha256').update(code).update(unitText).digest('hex').slice(0, 12)}`;
  await mkdir(opts.outDir, { recursive: true });
  const file = path.join(opts.outDir, AGENT_BUNDLE_FILE);
  const unit = path.join(opts.outDir, AGENT_UNIT_FILE);
  await writeFileAtomic(file, code, 0o755);
  await writeFileAtomic(unit, unitText, 0o644);
  log?.info({ file, bytes: code.byteLength, sha256: digest, version, ms: Date.now() - started }, 'bundled the agent');
  return { file, unit, sha256: digest, bytes: code.byteLength, version };
}

/** `agent/latest.json` in the bucket: the agent a bake installs into an image from a plain base image. */
export const PublishedAgentRecord = z.object({
  version: z.string(),
  /** object keys, with the prefix */
  key: z.string(),
  unitKey: z.string(),
  sha256: Sha256,
  unitSha256: Sha256,
  bytes: z.number().int().nonnegative(),
  publishedAt: z.string(),
});
export type PublishedAgentRecord = z.infer<typeof PublishedAgentRecord>;

export interface AgentBucket {
  s3: S3Client;
  bucket: string;
  /** "" or ending in "/" */
  prefix?: string;
}

export interface PublishedAgent {
  bucket: string;
  key: string;
  unitKey: string;
  sha256: string;
  bytes: number;
  version: string;
}

/** relative to the prefix */
export const AGENT_LATEST_KEY = 'agent/latest.json';
export const agentKeys = (prefix: string, version: string) => ({
  key: `${prefix}agent/kiln-agent-${checkName('version', version)}.mjs`,
  unitKey: `${prefix}agent/kiln-agent-${version}.service`,
});

/**
 * Uploads a bundle and its unit under agent/ and then points agent/latest.json at them, so a reader
 * never sees a pointer to objects that are not there yet. A version names its content: uploading it
 * again writes the same bytes.
 */
export async function publishAgentBundle(opts: AgentBucket & { bundle: AgentBundle; now?: () => Date }): Promise<PublishedAgent> {
  const { bundle, bucket } = opts;
  const prefix = opts.prefix ?? '';
  const { key, unitKey } = agentKeys(prefix, bundle.version);
  const [code, unitText] = await Promise.all([readFile(bundle.file), readFile(bundle.unit)]);
  if (code.byteLength !== bundle.bytes || sha256(code) !== bundle.sha256) {
    throw new KilnError('KILN_ARTIFACT_DIGEST', `${bundle.file} changed since it was bundled (sha256 ${sha256(code)}, ${code.byteLength} bytes; the bundle said ${bundle.sha256}, ${bundle.bytes} bytes): bundle again`);
  }
  const objects = s3Objects(opts.s3, bucket);
  await objects.put(key, code, 'text/javascript');
  await objects.put(unitKey, unitText, 'text/plain');
  const record: PublishedAgentRecord = {
    version: bundle.version,
    key,
    unitKey,
    sha256: bundle.sha256,
    unitSha256: sha256(unitText),
    bytes: bundle.bytes,
    publishedAt: (opts.now ?? (() => new Date()))().toISOString(),
  };
  await createDocStore(opts.s3, bucket, prefix).put(AGENT_LATEST_KEY, record);
  return { bucket, key, unitKey, sha256: record.sha256, bytes: record.bytes, version: record.version };
}

/** The agent last published to the bucket, or null when none was; KILN_STATE_INVALID when latest.json does not parse. */
export async function readPublishedAgent(opts: AgentBucket): Promise<PublishedAgentRecord | null> {
  return (await createDocStore(opts.s3, opts.bucket, opts.prefix ?? '').get(AGENT_LATEST_KEY, PublishedAgentRecord)) ?? null;
}
