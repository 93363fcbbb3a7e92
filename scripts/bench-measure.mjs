// What the bench:* scripts measure with: a process's memory and CPU from /proc, the machine's CPU,
// percentiles, option parsing, a child's IPC messages, and the in-memory ServiceManager that lets
// many agents share one process. Linux only (/proc).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export const say = (msg) => process.stderr.write(`[bench] ${msg}\n`);

const sorted = (xs) => [...xs].sort((a, b) => a - b);
export const median = (xs) => {
  const s = sorted(xs);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** nearest-rank percentile */
export const pct = (xs, p) => sorted(xs)[Math.max(0, Math.ceil((p / 100) * xs.length) - 1)];
export const r1 = (x) => Math.round(x * 10) / 10;
export const r2 = (x) => Math.round(x * 100) / 100;
export const r3 = (x) => Math.round(x * 1000) / 1000;

/** VmRSS, RssAnon, RssFile and VmHWM (peak RSS) of a process, in KiB. */
export function procMem(pid) {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: kb('VmRSS'), anonKiB: kb('RssAnon'), fileKiB: kb('RssFile'), hwmKiB: kb('VmHWM') };
}

/**
 * utime + stime of a process (all its threads), in clock ticks; with `reaped`, plus the CPU of its
 * children it has waited for (e.g. the `sync` an install runs).
 */
export function procTicks(pid, reaped = false) {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the fields after the name start at field 3 (state); utime, stime, cutime, cstime are fields 14 to 17
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]) + (reaped ? Number(f[13]) + Number(f[14]) : 0);
}

export const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;

/** Machine-wide CPU ticks from /proc/stat: busy (without steal), steal, idle. */
export function machineTicks() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6], steal: f[7] ?? 0, idle: f[3] + f[4] };
}

/** Cores the whole machine keeps busy over `ms` (a benchmark's own idle processes included). */
export async function busyCores(ms = 2_000) {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  return (b.busy - a.busy) / CLK_TCK / (ms / 1000);
}

/** Waits (up to `waitS` seconds) until the machine uses less than half a core; returns what it used last, in cores. */
export async function waitQuiet(waitS) {
  const deadline = Date.now() + waitS * 1000;
  let busy = await busyCores();
  while (busy >= 0.5 && Date.now() < deadline) busy = await busyCores();
  return r2(busy);
}

/** The soft and hard open-files limits of this process. */
export function openFilesLimit() {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m ? { soft: m[1], hard: m[2] } : null;
}

/** `int(name, min)` for parseArgs string options: the whole number, or exit 2 with the reason. */
export function intOption(opt) {
  return (name, min) => {
    const n = Number(opt[name]);
    if (!Number.isInteger(n) || n < min) {
      console.error(`--${name} ${opt[name]}: a whole number >= ${min}`);
      process.exit(2);
    }
    return n;
  };
}

/** Prints the script's header comment (its usage) for --help. */
export function printUsage(file) {
  const lines = readFileSync(file, 'utf8').split('\n').slice(1);
  console.log(lines.slice(0, lines.findIndex((l) => !l.startsWith('//'))).join('\n'));
}

/**
 * The next IPC message of `type` from a child, or a rejection if it exits first (with the tail of
 * `child.logFile` when set) or `ms` pass.
 */
export function nextMessage(child, type, ms = 600_000) {
  return new Promise((resolve, reject) => {
    const done = (fn, v) => {
      clearTimeout(timer);
      child.off('message', onMsg);
      child.off('exit', onExit);
      fn(v);
    };
    const what = child.mode ?? 'child';
    const onMsg = (m) => m?.type === type && done(resolve, m);
    const onExit = (code) => done(reject, new Error(`the ${what} process exited (${code}) before its ${type} message${child.logFile ? `; its log:\n${readFileSync(child.logFile, 'utf8').slice(-3000)}` : ''}`));
    const timer = setTimeout(() => done(reject, new Error(`no ${type} message from the ${what} process within ${ms} ms`)), ms);
    child.on('message', onMsg);
    child.on('exit', onExit);
  });
}

/**
 * A tiny in-memory ServiceManager (restart → active, status → active): with many agents in one
 * process, one app process and supervisor per agent would not fit in memory.
 */
export function benchService() {
  let active = false;
  return {
    kind: 'bench',
    async restart() {
      active = true;
    },
    async stop() {
      active = false;
    },
    async status() {
      return { active, pid: null, release: null, port: null };
    },
  };
}

/**
 * `fn` (stopping what a benchmark started, removing its temp dir) run once, whoever asks first:
 * the end, a failure, or SIGINT/SIGTERM (then the process exits 130). Later callers wait for the
 * same run.
 */
export function cleanupOnce(fn) {
  let running;
  const cleanup = () => (running ??= fn());
  // `on`, not `once`: a library's signal hook re-raises the signal (killing the process before the
  // cleanup ran) when it finds no other listener left.
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      if (running) return;
      say(`${sig}: cleaning up`);
      cleanup().finally(() => process.exit(130));
    });
  }
  return cleanup;
}

/**
 * The embedded S3 exactly as `kiln up` starts it (`startEmbeddedS3` of @kiln/controller, passed in),
 * plus a second `request` listener on its HTTP server that records every GET: the key (path-style,
 * bucket first, no query), when it came and when its response ended, the status, the bytes its
 * response declared (content-length: a ranged GET's range) and the Range header. It only observes:
 * s3rver's own listener answers the request.
 */
export async function startObservedS3(startEmbeddedS3, opts) {
  let server;
  const listen = http.Server.prototype.listen;
  http.Server.prototype.listen = function (...args) {
    server = this;
    return listen.apply(this, args);
  };
  let s3;
  try {
    s3 = await startEmbeddedS3(opts);
  } finally {
    http.Server.prototype.listen = listen;
  }
  if (!server) throw new Error('could not find the embedded S3 HTTP server to observe');
  const gets = [];
  server.on('request', (req, res) => {
    if (req.method !== 'GET') return;
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const g = { key: decodeURIComponent(q === -1 ? url : url.slice(0, q)), query: q === -1 ? '' : url.slice(q + 1), at: Date.now(), endAt: null, status: null, bytes: null, range: req.headers.range ?? null };
    gets.push(g);
    res.on('finish', () => Object.assign(g, { endAt: Date.now(), status: res.statusCode, bytes: Number(res.getHeader('content-length') ?? NaN) }));
  });
  return { ...s3, gets };
}
