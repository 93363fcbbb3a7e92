// Agent roots for the many-agents benchmarks: one root installed by a real agent boot, copied once
// per agent, so that every agent boots on a release already in place (it still recovers, reads the
// marker and resolves the channel, and finds nothing to install).
import { cp, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { benchService } from './bench-measure.mjs';

/**
 * Boots one agent (no controller) on `template` until it is idle; throws unless it installed
 * `version`. `agent` is the agent package's exports; `config` a raw agent config.
 */
export async function installTemplateRoot({ agent: { createAgent, parseAgentConfig }, template, config, store, keys, log, version }) {
  const a = createAgent({ root: template, config: parseAgentConfig(config, 'template config'), log, store, keys, service: benchService() });
  await a.start();
  await a.idle();
  await a.stop();
  const r = await a.report();
  if (r.installed?.version !== version) throw new Error(`the template root has ${JSON.stringify(r.installed)} installed, not ${version}`);
}

/** Copies `template` to `dir/r0` … `dir/r(count-1)`, 50 at a time. */
export async function copyRoots(template, dir, count) {
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < count; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, k) => cp(template, path.join(dir, `r${i + k}`), { recursive: true, verbatimSymlinks: true })));
  }
}
