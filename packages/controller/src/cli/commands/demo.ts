import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { KilnError, formatTable } from '@kiln/shared';
import type { CommandDef } from '../cli-command.js';
import { out, type CliContext } from '../cli-context.js';
import { startLocalStack } from '../../local/local-stack.js';
import { createProcessProvider } from '../../providers/process/process-provider.js';
import { findHaproxy } from '../../balancers/haproxy-process.js';

const DEMO_APP = fileURLToPath(new URL('../../../demo-app/', import.meta.url));
const GREETING = 'greetings from the fleet config';

async function get(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  return (await res.text()).trim();
}

export const demoCommand: CommandDef = {
  name: 'demo',
  summary: 'bake, launch, hotfix, heal and relaunch a fleet of 3 on local defaults, timing each strategy',
  usage: 'demo [--keep]',
  examples: ['kiln demo', 'kiln demo --keep                 # keep the work dir for a look afterwards'],
  details:
    'Starts an embedded S3 and the controller on 127.0.0.1 with the process provider, all in a temporary directory,\n' +
    'and runs the real `kiln` commands against them: set the fleet\'s config, bake v1 and launch a fleet of 3 from the image, hotfix v2 in place,\n' +
    'show the drift, heal (bake v2, replace), then relaunch v3 from the v2 image. Prints each strategy\'s wall time and\n' +
    'removes everything it started.',
  options: { keep: { type: 'boolean', help: 'leave the temporary directory (nothing keeps running) for a look afterwards' } },
  // It runs in a temporary directory of its own: --home would be ignored, so it is not offered.
  home: false,
  positionals: [0, 0],
  async run(ctx, flags) {
    const work = await mkdtemp(path.join(tmpdir(), 'kiln-demo-'));
    const home = path.join(work, '.kiln');
    const started = Date.now();
    out(ctx, `kiln demo: one agent, one install routine, three ways to ship (work dir ${work})`);
    // The key first: the controller signs channel pointers with it from its start.
    out(ctx, '\n$ kiln keys generate');
    if ((await runKiln(ctx, home, ['keys', 'generate'])) !== 0) throw new KilnError('KILN_KEY_INVALID', 'the demo could not make a release key');
    const haproxy = await findHaproxy(ctx.io.env);
    const stack = await startLocalStack({ home, log: ctx.log, dataDir: path.join(home, 's3'), bucket: 'kiln', port: 0, s3Port: 0, ...(haproxy ? { haproxy } : {}) });
    const provider = createProcessProvider({ dir: path.join(home, 'process'), log: ctx.log });
    const times: Array<[string, string, number]> = [];
    try {
      out(ctx, `controller ${stack.ctl.url}, S3 ${stack.s3.location.endpoint}, process provider in ${path.join(home, 'process')}\nbalancer: ${stack.balancerNote}`);
      const kiln = async (...args: string[]) => {
        out(ctx, `\n$ kiln ${args.join(' ')}`);
        const t = Date.now();
        const code = await runKiln(ctx, home, args);
        if (code !== 0) throw new KilnError('KILN_DEPLOY_FAILED', `the demo stopped: \`kiln ${args.join(' ')}\` exited ${code}`);
        return Date.now() - t;
      };
      const serving = async (want: string) => {
        const insts = (await provider.describeInstances({ 'kiln:fleet': 'web' })).filter((i) => i.state === 'running');
        let body = '';
        for (const i of insts) {
          body = await get(i.address!);
          if (!body.includes(` ${want} `) || !body.includes(GREETING)) throw new KilnError('KILN_HEALTH_FAILED', `${i.id} should serve ${want} with the fleet's GREETING but answered: ${body}`);
        }
        out(ctx, `  checked: all ${insts.length} running instances answer "${want}" with the fleet's config over HTTP, e.g. ${body}`);
      };

      for (const v of ['v1', 'v2', 'v3']) {
        const dir = path.join(work, `app-${v}`);
        await cp(DEMO_APP, dir, { recursive: true });
        await writeFile(path.join(dir, 'VERSION'), `${v}\n`);
        await kiln('release', 'push', dir, '--app', 'demo', '--version', v);
      }
      await kiln('fleet', 'create', 'web', '--app', 'demo', '--provider', 'process', '--size', '3');
      // Config belongs to the fleet, not the release: every deployment below carries it to the instances.
      await kiln('config', 'set', 'web', `GREETING=${GREETING}`);
      times.push(['bake + launch', 'v1: bake an image, launch 3 instances from it', await kiln('deploy', 'web', 'v1', '--strategy', 'bake')]);
      await serving('v1');
      await kiln('fleet', 'show', 'web');
      // Behind HAProxy, clients call the fleet's endpoint all along: every swap below must keep answering them.
      const endpoint = stack.haproxy?.endpoint('web');
      const probe = endpoint ? probeTraffic(endpoint) : undefined;
      // A batch of 1 with a balancer: one instance out at a time, two serving; all at once without one.
      times.push(['hotfix', 'v2 in place on the 3 live instances', await kiln('deploy', 'web', 'v2', '--strategy', 'hotfix', '--batch', probe ? '1' : '100%')]);
      await serving('v2');
      await kiln('drift', 'web');
      times.push(['heal (bake + replace)', 'v2: bake an image, replace the hotfixed instances', await kiln('heal', 'web')]);
      await kiln('status', 'web');
      times.push(['relaunch', 'v3: new instances from the v2 image install v3 at boot', await kiln('deploy', 'web', 'v3', '--strategy', 'relaunch')]);
      await serving('v3');
      await kiln('status', 'web');
      if (probe) {
        const seen = await probe.stop();
        out(ctx, `\nserved throughout: ${seen.ok} requests through ${endpoint} during the hotfix, heal and relaunch, ${seen.failed} failed${seen.failed ? ` (first: ${seen.firstError})` : ''}`);
        if (seen.failed) throw new KilnError('KILN_DEPLOY_FAILED', `the demo stopped: ${seen.failed} requests through the fleet's endpoint failed during the deployments`);
      } else {
        out(ctx, '\nno haproxy here: the fleet has no endpoint and the swaps above were not drained (apt-get install haproxy; docs/balancers.md)');
      }
      await kiln('images');

      out(ctx, `\nwall time per strategy (fleet of 3, process provider):\n${formatTable(['STRATEGY', 'WHAT', 'SECONDS'], times.map(([s, w, ms]) => [s, w, (ms / 1000).toFixed(1)]))}`);
    } finally {
      // Whatever happened above stands; a cleanup that fails is logged.
      const failed = (what: string) => (err: unknown) => void ctx.log.warn({ err }, `demo cleanup: cannot ${what}`);
      const left = await provider.describeInstances({}).catch((err: unknown) => (failed('list the instances')(err), []));
      await provider.terminate(left.map((i) => i.id)).catch(failed('terminate the instances'));
      await stack.close({ balancer: true }).catch(failed('stop the controller, S3 and HAProxy'));
      if (!flags.keep) await rm(work, { recursive: true, force: true });
    }
    out(ctx, `\nstopped ${'every instance'}, the controller and S3${flags.keep ? `; kept ${work}` : ', removed the work dir'}; done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  },
};

/**
 * Requests to `url` from 2 clients in a loop until stopped (a pause of 5 ms after each: a client, not
 * a load test that would slow the demo down): how many answered 200, how many did not.
 */
function probeTraffic(url: string): { stop(): Promise<{ ok: number; failed: number; firstError?: string }> } {
  const seen: { ok: number; failed: number; firstError?: string } = { ok: 0, failed: 0 };
  let running = true;
  const client = async () => {
    while (running) {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
        await res.text();
        if (res.status === 200) seen.ok++;
        else throw new Error(`HTTP ${res.status}`);
      } catch (err) {
        seen.failed++;
        seen.firstError ??= (err as Error).message;
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  };
  const clients = Array.from({ length: 2 }, client);
  return {
    async stop() {
      running = false;
      await Promise.all(clients);
      return seen;
    },
  };
}

/** Runs a `kiln` command in this process against the demo's home, its output indented under the command line. */
async function runKiln(ctx: CliContext, home: string, args: string[]): Promise<number> {
  const indent = (stream: NodeJS.WritableStream) =>
    new Writable({
      write(chunk, _enc, done) {
        stream.write(String(chunk).replace(/^(?=.)/gm, '  '));
        done();
      },
    });
  return ctx.runKiln([...args, '--home', home], { stdout: indent(ctx.io.stdout), stderr: indent(ctx.io.stderr), env: ctx.io.env, cwd: ctx.io.cwd });
}
