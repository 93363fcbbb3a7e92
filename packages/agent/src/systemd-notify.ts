import { execFile } from 'node:child_process';
import type { Logger } from '@kiln/shared';

export interface Notifier {
  ready(status: string): void;
  status(text: string): void;
  stop(): void;
}

/**
 * sd_notify for Type=notify units. Node has no Unix datagram sockets, so this runs `systemd-notify`
 * (the unit sets NotifyAccess=all). The watchdog is fed at half its period while the event loop
 * turns: a wedged agent stops feeding it and systemd restarts it.
 */
export function createNotifier(env: { NOTIFY_SOCKET?: string | undefined; WATCHDOG_USEC?: string | undefined }, log: Logger): Notifier {
  if (!env.NOTIFY_SOCKET) return { ready() {}, status() {}, stop() {} };
  const send = (...args: string[]) =>
    execFile('systemd-notify', args, { timeout: 5_000 }, (err) => {
      if (err) log.warn({ err: err.message, args }, 'systemd-notify failed');
    });
  let dog: NodeJS.Timeout | undefined;
  const usec = Number(env.WATCHDOG_USEC);
  if (usec > 0) {
    dog = setInterval(() => send('WATCHDOG=1'), Math.max(500, usec / 1000 / 2));
    dog.unref();
  }
  return {
    ready: (status) => send('--ready', `STATUS=${status}`),
    status: (text) => send(`STATUS=${text}`),
    stop: () => {
      clearInterval(dog);
      send('STOPPING=1');
    },
  };
}
