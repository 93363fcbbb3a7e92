import { chown, mkdir, readFile, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { KilnError } from '../errors/kiln-error.js';
import type { AppLayout } from '../release/install-layout.js';
import { releaseProcesses, type HookName, type HookSpec, type Manifest, type ServiceSpec } from '../release/release-schema.js';
import { renderEnvFile } from '../service/env-file.js';
import type { AppRun, HookOutcome, ServiceManager } from '../service/service-manager.js';
import { writeFileAtomic } from '../system/fs-atomic.js';
import { ifMissing } from '../system/fs-errors.js';
import { parseJson } from '../system/json-file.js';
import type { ConfigStamp } from './install-state.js';

/** A fleet config as the host keeps it: values, and secrets as references (resolved only into the 0600 environment file). */
export const HostConfig = z.strictObject({
  seq: z.number().int().min(1),
  sha256: z.string(),
  values: z.record(z.string(), z.string()),
  secrets: z.record(z.string(), z.string()),
});
export type HostConfig = z.infer<typeof HostConfig>;

/** Resolves secret references (KEY → ref) to their values, on the host. */
export type SecretResolver = (secrets: Record<string, string>) => Promise<Record<string, string>>;

export interface RunContext {
  layout: AppLayout;
  service: ServiceManager;
  resolveSecrets?: SecretResolver | undefined;
  /** as root: the service user that owns the persistent directories */
  owner?: { uid: number; gid: number } | undefined;
}

const configFile = (layout: AppLayout, seq: number) => path.join(layout.configs, `${seq}.json`);
const envFileOf = (layout: AppLayout, seq: number) => path.join(layout.run, `config-${seq}.env`);

/** Keeps a config version on the host (values and references only), so a swap back or a reboot can run with it again. */
export async function keepConfig(layout: AppLayout, config: HostConfig): Promise<void> {
  await mkdir(layout.configs, { recursive: true });
  await writeFileAtomic(configFile(layout, config.seq), JSON.stringify(config) + '\n');
  // Written afresh: the secrets may have changed where they live although the references did not.
  await rm(envFileOf(layout, config.seq), { force: true });
}

/**
 * The environment file of a config version: its values and its secrets resolved on this host, mode
 * 0600, under the root's /run (gone at reboot: written again from the kept config when needed).
 */
async function envFile(ctx: RunContext, stamp: ConfigStamp): Promise<string> {
  const file = envFileOf(ctx.layout, stamp.seq);
  if (await ifMissing(readFile(file), undefined)) return file;
  const text = await ifMissing(readFile(configFile(ctx.layout, stamp.seq), 'utf8'), undefined);
  if (!text) throw new KilnError('KILN_CONFIG_NOT_FOUND', `config version ${stamp.seq} is not kept on ${ctx.layout.root}; deploy the fleet's config again (kiln deploy FLEET --config)`);
  const config = parseJson(text, HostConfig, { code: 'KILN_STATE_INVALID', what: configFile(ctx.layout, stamp.seq) });
  if (config.sha256 !== stamp.sha256) throw new KilnError('KILN_STATE_INVALID', `the kept config version ${stamp.seq} has another digest than the one installed; deploy the fleet's config again`);
  const secrets = Object.keys(config.secrets).length ? await resolver(ctx)(config.secrets) : {};
  await mkdir(ctx.layout.run, { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, renderEnvFile({ ...config.values, ...secrets }), 0o600);
  return file;
}

function resolver(ctx: RunContext): SecretResolver {
  if (!ctx.resolveSecrets) throw new KilnError('KILN_SECRET_UNRESOLVED', 'this config has secrets but nothing here resolves secret references (run the install through the agent)');
  return ctx.resolveSecrets;
}

/** Creates the persistent directories and links each into the release under its name. */
export async function linkPersistent(ctx: RunContext, manifest: Manifest, releaseDir: string): Promise<void> {
  for (const name of manifest.persist ?? []) {
    const dir = path.join(ctx.layout.data, name);
    // Under systemd the unit's StateDirectory= creates it, owned by the app's dynamic user.
    if (ctx.service.kind === 'systemd') await mkdir(ctx.layout.data, { recursive: true });
    else {
      await mkdir(dir, { recursive: true, mode: 0o750 });
      if (ctx.owner) await chown(dir, ctx.owner.uid, ctx.owner.gid);
    }
    const link = path.join(releaseDir, name);
    await rm(link, { force: true });
    await symlink(path.relative(releaseDir, dir), link);
  }
}

/** Everything the processes of a release get besides their spec: where their data lives. */
function releaseEnv(ctx: RunContext, manifest: Manifest): Record<string, string> {
  return manifest.persist?.length ? { KILN_DATA_DIR: ctx.layout.data } : {};
}

/** What the service manager runs for a release with a config version. */
export async function appRun(ctx: RunContext, manifest: Manifest, config: ConfigStamp | undefined): Promise<AppRun> {
  const extra = releaseEnv(ctx, manifest);
  const processes: Record<string, ServiceSpec> = {};
  for (const [name, p] of Object.entries(releaseProcesses(manifest))) {
    const { health: _health, ...spec } = p;
    processes[name] = { ...spec, env: { ...spec.env, ...extra } };
  }
  return {
    processes,
    ...(config ? { envFile: await envFile(ctx, config) } : {}),
    ...(manifest.persist?.length ? { dataDirs: manifest.persist.map((n) => path.join(ctx.layout.data, n)) } : {}),
  };
}

/** Runs one of the release's hooks (if it has it) in `releaseDir` with the app's environment. */
export async function runHook(ctx: RunContext, args: { name: HookName; manifest: Manifest; releaseDir: string; config: ConfigStamp | undefined; port?: number | undefined; onSpawn?: (pid: number) => Promise<void> }): Promise<HookOutcome | undefined> {
  const hook = args.manifest.hooks?.[args.name];
  if (!hook) return undefined;
  const run = await appRun(ctx, args.manifest, args.config);
  const web = run.processes.web!;
  const port = args.port ?? web.port;
  return ctx.service.runHook({
    name: args.name,
    command: hook.command,
    cwd: args.releaseDir,
    env: { ...web.env, KILN_RELEASE_DIR: args.releaseDir, KILN_HOOK: args.name, ...(port ? { PORT: String(port) } : {}) },
    ...(run.envFile ? { envFile: run.envFile } : {}),
    ...(run.dataDirs ? { dataDirs: run.dataDirs } : {}),
    timeoutMs: hook.timeoutMs,
    ...(args.onSpawn ? { onSpawn: args.onSpawn } : {}),
  });
}

/** A hook's failure as an error a person acts on: what ran, how it ended, its last lines. */
export function hookError(name: HookName, hook: HookSpec, out: HookOutcome): KilnError {
  const how = out.timedOut ? `was killed at its timeout of ${hook.timeoutMs} ms` : `exited with code ${out.code}`;
  const tail = out.tail.length ? `; its last lines:\n${out.tail.join('\n')}` : ' (it printed nothing)';
  return new KilnError(out.timedOut ? 'KILN_HOOK_TIMEOUT' : 'KILN_HOOK_FAILED', `the ${name} hook (${hook.command.join(' ')}) ${how}${tail}`);
}
