import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, Message, isKilnError, readJsonFile, writeFileAtomic, type Logger, type MessageOf } from '@kiln/shared';
import { z } from 'zod';

export type CommandMessage = MessageOf<'command'>;

/** The agent's work, run one at a time: never two installs, whatever asked for them. */
export type Job = { kind: 'boot' } | { kind: 'poll' } | { kind: 'tree' } | { kind: 'command'; command: CommandMessage };

export interface JobQueue {
  /** Starts the job now (synchronously) or queues it; throws KILN_BUSY past `maxQueued` waiting commands. */
  add(job: Job): 'started' | 'queued';
  /** whether a command with this id is running or waiting */
  has(commandId: string): 'running' | 'queued' | undefined;
  /** whether a job of this kind is running or waiting (boot, poll and tree are never queued twice) */
  pending(kind: Job['kind']): boolean;
  /** commands waiting behind the running job (boot, poll and tree jobs are not counted) */
  readonly waiting: number;
  /** Resolves once nothing runs or waits (once closed: once nothing runs) and the inbox is written. */
  idle(): Promise<void>;
  /** Commands accepted before a restart and not yet finished, to run again (they are idempotent by id). */
  restore(): Promise<CommandMessage[]>;
  /** Runs nothing more; the commands still waiting stay in the inbox. */
  close(): void;
}

const Inbox = z.array(z.unknown());

/**
 * A serial job queue. Accepted commands are written to the inbox file until they finish, so a
 * command accepted just before a crash runs after the restart instead of being lost.
 */
export function createJobQueue(opts: { inboxFile: string; maxQueued: number; log: Logger; run: (job: Job) => Promise<void> }): JobQueue {
  const waiting: Job[] = [];
  let running: Job | undefined;
  let closed = false;
  let idleWaiters: Array<() => void> = [];
  let persisted = Promise.resolve();

  const commandsInFlight = () => [running, ...waiting].filter((j): j is Extract<Job, { kind: 'command' }> => j?.kind === 'command').map((j) => j.command);
  // Without the manifest an install carried (up to 64 KiB each): after a restart the agent fetches it.
  const forInbox = (c: CommandMessage) => (c.action.kind === 'install' && c.action.manifest ? { ...c, action: { ...c.action, manifest: undefined } } : c);
  // Writes are chained so the file always ends with the latest list.
  const persist = () => {
    persisted = persisted.then(async () => {
      await mkdir(path.dirname(opts.inboxFile), { recursive: true });
      await writeFileAtomic(opts.inboxFile, JSON.stringify(commandsInFlight().map(forInbox)) + '\n');
    }).catch((err) => opts.log.error({ err }, 'cannot write the command inbox'));
    return persisted;
  };

  async function pump(): Promise<void> {
    while (!closed && !running && waiting.length > 0) {
      running = waiting.shift()!;
      try {
        await opts.run(running);
      } catch (err) {
        opts.log.error({ err, job: running.kind }, 'job failed');
      }
      const finished = running;
      running = undefined;
      if (finished.kind === 'command') await persist();
    }
    // Once closed, the commands still waiting stay in the inbox for the next start; nothing more runs.
    if (!running && (closed || waiting.length === 0)) {
      const w = idleWaiters;
      idleWaiters = [];
      for (const resolve of w) resolve();
    }
  }

  return {
    add(job) {
      if (job.kind === 'command') {
        const queuedCommands = waiting.filter((j) => j.kind === 'command').length;
        if (queuedCommands >= opts.maxQueued) {
          throw new KilnError('KILN_BUSY', `the agent already has ${queuedCommands} commands waiting behind a running one; send this one again later`);
        }
      }
      const startsNow = !running && waiting.length === 0;
      waiting.push(job);
      // Started before the inbox write lands: the install routine journals on its own, and the
      // inbox only guards commands still waiting.
      void pump();
      if (job.kind === 'command') void persist();
      return startsNow ? 'started' : 'queued';
    },
    has(commandId) {
      if (running?.kind === 'command' && running.command.id === commandId) return 'running';
      return waiting.some((j) => j.kind === 'command' && j.command.id === commandId) ? 'queued' : undefined;
    },
    pending(kind) {
      return running?.kind === kind || waiting.some((j) => j.kind === kind);
    },
    get waiting() {
      return waiting.filter((j) => j.kind === 'command').length;
    },
    idle() {
      // Also waits for the inbox writes, so nothing is written once a stopped agent's idle() resolves.
      if (!running && (closed || waiting.length === 0)) return persisted;
      return new Promise<void>((resolve) => idleWaiters.push(resolve)).then(() => persisted);
    },
    async restore() {
      let list: unknown[] | undefined;
      try {
        list = await readJsonFile(opts.inboxFile, Inbox, { code: 'KILN_STATE_INVALID', unreadable: 'KILN_STATE_INVALID', what: 'the command inbox' });
      } catch (err) {
        if (!isKilnError(err, 'KILN_STATE_INVALID')) throw err;
        opts.log.warn({ err }, 'the command inbox does not parse: starting with an empty one');
      }
      const commands: CommandMessage[] = [];
      for (const item of list ?? []) {
        const m = Message.safeParse(item);
        if (m.success && m.data.type === 'command') commands.push(m.data);
        else opts.log.warn('dropping an unreadable command from the inbox');
      }
      return commands;
    },
    close() {
      closed = true;
    },
  };
}
