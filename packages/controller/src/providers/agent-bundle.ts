import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Message, Plugin } from 'esbuild';
import { AGENT_VERSION, KilnError, Sha256, checkName, createDocStore, s3Objects, writeFileAtomic, type Logger } from '@kiln/shared';
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
  /** the agent's version (AGENT_VERSION, the one it reports) and a short hash over the file and its unit: `0.1.0-1a2b3c4d5e6f` */
  version: string;
}

export interface BuildAgentBundleOptions {
  outDir: string;
  log?: Logger;
}

// kiln-agent (the agent, and the daemon of the process supervisor it starts) and its unit, as the agent package exports them.
const AGENT_MAIN = fileURLToPath(import.meta.resolve('@kiln/agent/main'));
const AGENT_UNIT = fileURLToPath(import.meta.resolve('@kiln/agent/units/kiln-agent.service'));
// Paths in the bundle's comments are relative to this package, so the same checkout layout gives the same bytes.
const WORKING_DIR = fileURLToPath(new URL('../..', import.meta.url));

export const AGENT_BUNDLE_FILE = 'kiln-agent.mjs';
export const AGENT_UNIT_FILE = 'kiln-agent.service';

// ESM output cannot `require`: CommonJS dependencies (the AWS SDK, ws, pino) call it for Node's
// built-ins, so the bundle makes one. The entry's hashbang, kept first, lets the file run as /usr/local/bin/kiln-agent.
const BANNER = "import { createRequire as __kilnCreateRequire } from 'node:module'; const require = __kilnCreateRequire(import.meta.url);";

// Native accelerators ws loads in a try/catch: left out, ws falls back to JavaScript. Marked external so
// that a machine which happens to have them installed does not bundle their loader of a .node file.
const OPTIONAL_NATIVE = ['bufferutil', 'utf-8-validate'];

/**
 * The one rewrite of a source: @kiln/shared loads the AWS SDKs (S3; SSM and Secrets Manager for secrets) on first use through a `require` made
 * with `createRequire(import.meta.url)` (synchronous, so that createS3Client stays synchronous), and
 * esbuild bundles only calls to a free `require` (evanw/esbuild#1828). Without that local `require`,
 * the calls go to the banner's, which esbuild bundles; they still run on first use.
 */
const LOCAL_REQUIRE = /^const require = createRequire\(import\.meta\.url\);$/m;
const s3SdkInBundle: Plugin = {
  name: 'kiln-s3-sdk',
  setup(b) {
    b.onLoad({ filter: /[\\/](s3|secret)-sdk\.js$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      // Not found: LEFT_BEHIND below names the createRequire left in the bundle.
      return LOCAL_REQUIRE.test(text) ? { contents: text.replace(LOCAL_REQUIRE, ''), loader: 'js' } : undefined;
    });
  },
};

// What would still need a file beside the bundle: a createRequire (other than the banner's) or a sibling URL.
const LEFT_BEHIND = [/\bcreateRequire\(import\.meta\.url\)/g, /new URL\(\s*["'`]\.{1,2}\/[^"'`]*["'`]\s*,\s*import\.meta\.url\s*\)/g];

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const formatMessages = (msgs: Message[]) => msgs.map((m) => `${m.location ? `${m.location.file}:${m.location.line}: ` : ''}${m.text}`).join('; ');

/** Bundles the built kiln-agent and everything it imports into OUT/kiln-agent.mjs, which runs with Node alone. */
export async function buildAgentBundle(opts: BuildAgentBundleOptions): Promise<AgentBundle> {
  const log = opts.log?.child({ module: 'agent-bundle' });
  const started = Date.now();
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
      entryPoints: [AGENT_MAIN],
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'esm',
      banner: { js: BANNER },
      external: OPTIONAL_NATIVE,
      plugins: [s3SdkInBundle],
      absWorkingDir: WORKING_DIR,
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
  const version = `${AGENT_VERSION}-${createHash('sha256').update(code).update(unitText).digest('hex').slice(0, 12)}`;
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
