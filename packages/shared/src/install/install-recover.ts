import { readdir, readlink, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { TMP_MARK, swapSymlink } from '../system/fs-atomic.js';
import { acquireLock } from './install-lock.js';
import type { AppLayout } from '../release/install-layout.js';
import { emptyState, readJournal, readState, writeState, type ConfigStamp, type InstallState, type InstalledRelease, type Operation, type Via } from './install-state.js';
import { appRun, linkPersistent, type RunContext, type SecretResolver } from './app-run.js';
import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { readLocalManifest } from '../release/release-resolve.js';
import { contentSha256, Manifest } from '../release/release-schema.js';
import type { ServiceManager } from '../service/service-manager.js';
import { ifMissing } from '../system/fs-errors.js';
import { parseJson } from '../system/json-file.js';
import { isAlive, isSameProcess } from '../system/process-alive.js';
import { killGroup } from '../service/run-hook.js';
import { sha256Hex } from '../release/signing.js';

/** The version `current` points to, or null when there is no `current` yet. */
export async function currentVersion(layout: AppLayout): Promise<string | null> {
  const target = await ifMissing(readlink(layout.current), null);
  return target === null ? null : path.basename(target);
}

/** Whether the release has both its tree and its complete marker (a missing one: no). */
export async function isComplete(layout: AppLayout, version: string): Promise<boolean> {
  const exists = async (p: string) => (await ifMissing(stat(p), undefined)) !== undefined;
  return (await exists(layout.metaFile(version))) && (await exists(layout.release(version)));
}

/** The manifest of a complete release on disk (its marker), parsed, or undefined when it is missing or damaged. */
export async function readInstalledManifest(layout: AppLayout, version: string): Promise<{ manifest: Manifest; sha256: string } | undefined> {
  const local = await readLocalManifest(layout.metaFile(version));
  if (!local) return undefined;
  try {
    return { manifest: parseJson(local.bytes.toString('utf8'), Manifest, { code: 'KILN_MANIFEST_INVALID', what: layout.metaFile(version) }), sha256: sha256Hex(local.bytes) };
  } catch (err) {
    if (isKilnError(err, 'KILN_MANIFEST_INVALID')) return undefined;
    throw err;
  }
}

/** What state.json records of the release `current` points to. */
export function installedRelease(version: string, m: { manifest: Manifest; sha256: string }, via: Via, installedAt: string): InstalledRelease {
  return { version, seq: m.manifest.seq, manifestSha256: m.sha256, artifactSha256: contentSha256(m.manifest), via, installedAt };
}

/**
 * Runs a release (with its config) again after a failed or interrupted install, or stops the app when
 * there is none; the agent starts the installed release at boot the same way. Never throws: what
 * failed is logged and returned.
 */
export async function restoreService(layout: AppLayout, release: { version: string; config?: ConfigStamp | undefined } | null, ctx: Omit<RunContext, 'layout'>, log: Logger): Promise<Error | undefined> {
  try {
    const prev = release ? await readInstalledManifest(layout, release.version) : undefined;
    if (!prev) await ctx.service.stop();
    else {
      await linkPersistent({ ...ctx, layout }, prev.manifest, layout.release(release!.version));
      await ctx.service.restart(await appRun({ ...ctx, layout }, prev.manifest, release!.config));
    }
    return undefined;
  } catch (err) {
    log.error({ err, version: release?.version }, 'could not put the service back');
    return err as Error;
  }
}

/** Loads the state, rebuilding it from the disk (current symlink + complete markers) when it does not parse. */
export async function loadState(layout: AppLayout, app: string, log: Logger): Promise<InstallState> {
  try {
    return (await readState(layout.state)) ?? emptyState(app);
  } catch (err) {
    if (!isKilnError(err, 'KILN_STATE_INVALID')) throw err;
    log.warn({ err }, 'install state does not parse: rebuilding it from the disk');
    const state: InstallState = { ...emptyState(app), rebuiltAt: new Date().toISOString() };
    const version = await currentVersion(layout);
    const installed = version ? await readInstalledManifest(layout, version) : undefined;
    if (installed) state.current = installedRelease(version!, installed, 'manual', new Date().toISOString());
    await writeState(layout.state, state);
    return state;
  }
}

async function removeTmp(dir: string): Promise<void> {
  const names = await ifMissing(readdir(dir), []);
  await Promise.all(names.filter((n) => n.startsWith(TMP_MARK)).map((n) => rm(path.join(dir, n), { recursive: true, force: true })));
}

/** A lock being written (`install.lock.PID-x`) by a process that died, or one moved aside as stale. */
async function removeLockLeftovers(lock: string): Promise<void> {
  const dir = path.dirname(lock);
  const base = `${path.basename(lock)}.`;
  for (const name of await ifMissing(readdir(dir), [])) {
    if (!name.startsWith(base)) continue;
    const rest = name.slice(base.length);
    const pid = Number(/^(\d+)-/.exec(rest)?.[1]);
    if (rest.startsWith('stale-') || (pid && !isAlive(pid))) await rm(path.join(dir, name), { force: true });
  }
}

/**
 * Start-up recovery, run under the install lock before any install and by the agent at boot:
 * leaves `current` on a complete release, removes staging and temporary files, settles the journal.
 */
export async function recoverApp(layout: AppLayout, app: string, log: Logger, service?: ServiceManager, resolveSecrets?: SecretResolver): Promise<{ interrupted: Operation | null }> {
  await rm(layout.staging, { recursive: true, force: true });
  await Promise.all([layout.appDir, layout.releases, layout.meta].map(removeTmp));
  await removeLockLeftovers(layout.lock);
  let journal;
  try {
    journal = await readJournal(layout.journal);
  } catch (err) {
    log.warn({ err }, 'install journal does not parse: discarding it');
    journal = undefined;
    await rm(layout.journal, { force: true });
  }
  const state = await loadState(layout, app, log);
  let interrupted: Operation | null = null;

  if (journal) {
    // A hook the killed install left running (a migration) ends with it, whole process group.
    if (journal.hook && isSameProcess(journal.hook.pid, journal.hook.start)) {
      log.warn({ pid: journal.hook.pid, step: journal.step }, 'ending a hook left running by an interrupted install');
      killGroup(journal.hook.pid);
    }
    const now = new Date().toISOString();
    const cur = await currentVersion(layout);
    const committed = journal.step === 'commit' && cur === journal.version && (await isComplete(layout, journal.version));
    if (committed) {
      // Health had passed; only the state write was lost. Finish it.
      const installed = await readInstalledManifest(layout, journal.version);
      if (state.current?.version !== journal.version) state.previous = state.current;
      state.current = { ...installedRelease(journal.version, installed!, journal.via, now), ...(journal.config ? { config: journal.config } : {}) };
      if (journal.pointer) state.channels[journal.pointer.channel] = Math.max(state.channels[journal.pointer.channel] ?? 0, journal.pointer.seq);
      interrupted = { op: journal.op, version: journal.version, ...(journal.commandId ? { commandId: journal.commandId } : {}), startedAt: journal.startedAt, finishedAt: now, outcome: journal.op === 'rollback' ? 'rolled-back' : 'installed' };
    } else {
      // Past the swap the service may run the new release even where `current` was already swapped
      // back (a kill between the swap-back and its restart): put both back.
      const configChanged = journal.config?.seq !== state.current?.config?.seq;
      const touchedService = journal.step === 'restart' || journal.step === 'health' || journal.step === 'validate' || cur !== journal.from || (configChanged && cur === journal.version && journal.step !== 'before-start' && journal.step !== 'before-stop');
      if (cur !== journal.from) {
        if (journal.from && (await isComplete(layout, journal.from))) await swapSymlink(layout.current, `releases/${journal.from}`);
        else if (!journal.from) await rm(layout.current, { force: true });
      }
      log.warn({ version: journal.version, step: journal.step, back: journal.from }, 'an install was interrupted: put back what it changed');
      const back = journal.from ? { version: journal.from, config: state.current?.version === journal.from ? state.current.config : undefined } : null;
      if (service && touchedService) await restoreService(layout, back, { service, resolveSecrets }, log);
      const error = new KilnError('KILN_INTERRUPTED', `the ${journal.op} of ${journal.version} was interrupted at step ${journal.step} (pid ${journal.pid}); ${journal.from ?? 'nothing'} stays current`);
      interrupted = { op: journal.op, version: journal.version, ...(journal.commandId ? { commandId: journal.commandId } : {}), startedAt: journal.startedAt, finishedAt: now, outcome: 'interrupted', error: { code: error.code, message: error.message } };
    }
    state.last = interrupted;
    if (interrupted.commandId) state.commands = [...state.commands, interrupted].slice(-100);
    await writeState(layout.state, state);
    await rm(layout.journal, { force: true });
  }

  // A release directory without its complete marker was never finished.
  const cur = await currentVersion(layout);
  for (const name of await ifMissing(readdir(layout.releases), [])) {
    if (name === cur || (await isComplete(layout, name))) continue;
    log.warn({ version: name }, 'removing an incomplete release directory');
    await rm(path.join(layout.releases, name), { recursive: true, force: true });
  }
  // The stamps of a release that never got its marker (written just before it).
  for (const name of await ifMissing(readdir(layout.meta), [])) {
    if (name.endsWith('.stamps') && !(await ifMissing(stat(layout.metaFile(name.slice(0, -'.stamps'.length))), undefined))) await rm(path.join(layout.meta, name), { force: true });
  }
  return { interrupted };
}

/** Keeps current, previous and the `keep` newest others; removes the marker first, then the tree. */
export async function pruneReleases(layout: AppLayout, state: InstallState, keep: number, log: Logger): Promise<string[]> {
  const protect = new Set([state.current?.version, state.previous?.version].filter((v): v is string => !!v));
  const cur = await currentVersion(layout);
  if (cur) protect.add(cur);
  const metas = await ifMissing(readdir(layout.meta), []);
  const others: Array<{ version: string; mtime: number }> = [];
  for (const m of metas) {
    if (!m.endsWith('.json')) continue;
    const version = m.slice(0, -5);
    if (protect.has(version)) continue;
    others.push({ version, mtime: (await stat(path.join(layout.meta, m))).mtimeMs });
  }
  others.sort((a, b) => b.mtime - a.mtime);
  const doomed = others.slice(keep).map((o) => o.version);
  for (const version of doomed) {
    await rm(layout.metaFile(version), { force: true });
    await rm(layout.stampsFile(version), { force: true });
    await rm(layout.release(version), { recursive: true, force: true });
    log.info({ version }, 'removed an old release');
  }
  // Config versions neither current nor previous runs with, with their environment files (resolved secrets).
  const keepSeq = new Set([state.current?.config?.seq, state.previous?.config?.seq].filter((n): n is number => n !== undefined));
  for (const [dir, re] of [[layout.configs, /^(\d+)\.json$/], [layout.run, /^config-(\d+)\.env$/]] as const) {
    for (const name of await ifMissing(readdir(dir), [] as string[])) {
      const seq = Number(re.exec(name)?.[1]);
      if (seq && !keepSeq.has(seq)) await rm(path.join(dir, name), { force: true });
    }
  }
  return doomed;
}

/** Recovery on its own (the agent at boot, `kiln host recover`): takes the install lock for it. */
export async function recoverUnderLock(layout: AppLayout, app: string, log: Logger, service?: ServiceManager, resolveSecrets?: SecretResolver): Promise<{ interrupted: Operation | null }> {
  const lock = await acquireLock(layout.lock, `recover ${app}`);
  try {
    return await recoverApp(layout, app, log, service, resolveSecrets);
  } finally {
    await lock.release();
  }
}
