import path from 'node:path';
import { createS3Client, formatBytes } from '@kiln/shared';
import { AGENT_LATEST_KEY, buildAgentBundle, publishAgentBundle, type AgentBundle } from '../../providers/agent-bundle.js';
import { JSON_OPTION, S3_OPTIONS, type CommandDef } from '../cli-command.js';
import { out, printJson, resolveLocation, str, type CliContext, type Flags } from '../cli-context.js';

const OUT_OPTION: CommandDef['options'] = {
  out: { type: 'string', value: 'DIR', help: 'where to write kiln-agent.mjs and kiln-agent.service (default .kiln/agent-bundle)' },
};

const bundleInto = (ctx: CliContext, flags: Flags): Promise<AgentBundle> =>
  buildAgentBundle({ outDir: path.resolve(ctx.io.cwd, str(flags, 'out') ?? path.join(ctx.home, 'agent-bundle')), log: ctx.log });

export const agentBundleCommand: CommandDef = {
  name: 'agent bundle',
  summary: 'build the agent as one file that runs with Node alone, plus its systemd unit',
  usage: 'agent bundle [--out DIR] [--json]',
  examples: ['kiln agent bundle --out ./agent'],
  details: 'Install kiln-agent.mjs as /usr/local/bin/kiln-agent (mode 0755) and kiln-agent.service in /etc/systemd/system; see docs/agent.md.',
  options: { ...OUT_OPTION, ...JSON_OPTION },
  positionals: [0, 0],
  async run(ctx, flags) {
    const bundle = await bundleInto(ctx, flags);
    if (ctx.json) return printJson(ctx, bundle);
    out(ctx, `agent ${bundle.version}: ${bundle.file} (${formatBytes(bundle.bytes)}, sha256 ${bundle.sha256})\nunit ${bundle.unit}`);
  },
};

export const agentPublishCommand: CommandDef = {
  name: 'agent publish',
  summary: 'bundle the agent and upload it to the bucket (agent/latest.json names it), for bakes from a plain base image',
  usage: 'agent publish [--out DIR] [--bucket NAME] [--json]',
  examples: ['kiln agent publish', 'kiln agent publish --bucket my-releases --region eu-west-1'],
  options: { ...OUT_OPTION, ...S3_OPTIONS, ...JSON_OPTION },
  positionals: [0, 0],
  async run(ctx, flags) {
    // The bucket first: a missing one is reported before the bundling work.
    const loc = await resolveLocation(flags, ctx);
    const bundle = await bundleInto(ctx, flags);
    const published = await publishAgentBundle({ s3: createS3Client(loc), bucket: loc.bucket, prefix: loc.prefix, bundle });
    if (ctx.json) return printJson(ctx, published);
    const where = (key: string) => `s3://${published.bucket}/${key}`;
    out(ctx, `published agent ${published.version} (${formatBytes(published.bytes)}, sha256 ${published.sha256})\n  ${where(published.key)}\n  ${where(published.unitKey)}\n  ${where(loc.prefix + AGENT_LATEST_KEY)} -> ${published.version}`);
  },
};
