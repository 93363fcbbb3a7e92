import type { CliContext, Flags } from './cli-context.js';

export interface OptionDef {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  /** shown in --help as "--name VALUE" */
  value?: string;
  help: string;
}

export interface CommandDef {
  /** one or two words: "install", "release push" */
  name: string;
  summary: string;
  /** the synopsis after "kiln " */
  usage: string;
  /** extra help text after the options */
  details?: string;
  /** command lines shown under "examples:" in its help (every command has at least one: a test checks) */
  examples?: string[];
  /** false: the command does not read kiln's local directory, so it takes no --home (the demo works in a temporary one) */
  home?: false;
  options: Record<string, OptionDef>;
  /** how many positionals: [min, max] */
  positionals: [number, number];
  run(ctx: CliContext, flags: Flags, args: string[]): Promise<number | void>;
}

/** What every command takes (but `home: false` ones take no --home). */
export function commonOptions(cmd: Pick<CommandDef, 'home'>): Record<string, OptionDef> {
  return {
    ...(cmd.home === false ? {} : { home: { type: 'string', value: 'DIR', help: "kiln's local directory: keys, local S3, the controller's address (default ./.kiln; env KILN_HOME)" } }),
    'log-level': { type: 'string', value: 'LEVEL', help: 'log detail on stderr: error, warn, info, debug (default warn)' },
    help: { type: 'boolean', short: 'h', help: 'show this help' },
  };
}

export const S3_OPTIONS: Record<string, OptionDef> = {
  bucket: { type: 'string', value: 'NAME', help: 'S3 bucket (default: the local one `kiln up` runs; env KILN_BUCKET)' },
  prefix: { type: 'string', value: 'PREFIX', help: 'key prefix inside the bucket, ending in "/" (env KILN_PREFIX)' },
  's3-endpoint': { type: 'string', value: 'URL', help: 'an S3-compatible endpoint instead of AWS (env KILN_S3_ENDPOINT)' },
  region: { type: 'string', value: 'REGION', help: 'AWS region (env AWS_REGION)' },
};

export const TRUST_OPTIONS: Record<string, OptionDef> = {
  trust: { type: 'string', multiple: true, value: 'FILE', help: 'a pinned release public key (repeatable; default: every *.pub in .kiln/keys)' },
};

export const JSON_OPTION: Record<string, OptionDef> = {
  json: { type: 'boolean', help: 'print JSON on stdout instead of a table' },
};

export const API_OPTIONS: Record<string, OptionDef> = {
  controller: { type: 'string', value: 'URL', help: 'the controller (default: the one `kiln up` runs here; env KILN_CONTROLLER)' },
  token: { type: 'string', value: 'TOKEN', help: 'an operator token (default: the local one in .kiln/controller.json; env KILN_TOKEN)' },
};
