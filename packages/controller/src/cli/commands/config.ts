import { KilnError, formatTable } from '@kiln/shared';
import { openApi } from '../api-client.js';
import { API_OPTIONS, JSON_OPTION, type CommandDef } from '../cli-command.js';
import { list, note, out, printJson, type CliContext, type Flags } from '../cli-context.js';
import type { ConfigBody, ConfigHistory, ConfigView } from '../../server/api-types.js';

/** How many KEY=VALUE arguments one command takes: far more than a fleet's config has keys. */
const MAX_ARGS = 1000;

const configRoute = (fleet: string) => `/v1/fleets/${encodeURIComponent(fleet)}/config`;

/** What every change prints last: nothing runs with the new version until a deployment takes it. */
const takesEffect = (fleet: string) => `takes effect with \`kiln deploy ${fleet} --config\`; running instances keep the config they started with until then`;

/**
 * `KEY=VALUE` arguments as a record. A malformed one is named by its position, never quoted: it
 * may be a secret's value typed where its reference or a key belongs.
 */
function pairs(args: string[], what: string, form: string): Record<string, string> {
  const out: Record<string, string> = {};
  args.forEach((arg, i) => {
    const eq = arg.indexOf('=');
    if (eq < 1) throw new KilnError('KILN_USAGE', `${what} ${i + 1} is not ${form}`);
    out[arg.slice(0, eq)] = arg.slice(eq + 1);
  });
  return out;
}

/** Names that usually hold a secret: such a key given as a plain value (kept in the bucket as it is) gets a warning. */
const SECRET_LIKE = /PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY/i;

/** The first line of every answer: which version of whose config. */
const heading = (c: ConfigView) => `config of fleet ${c.fleet} (app ${c.app}): seq ${c.seq}, sha256 ${c.sha256}, created ${c.createdAt}`;

async function publish(ctx: CliContext, flags: Flags, fleet: string, change: { set?: Record<string, string>; secrets?: Record<string, string>; unset?: string[] }, said: string[]): Promise<void> {
  const { config } = await (await openApi(flags, ctx)).post<ConfigBody>(configRoute(fleet), change);
  if (ctx.json) return printJson(ctx, config);
  out(ctx, [heading(config), ...said.map((s) => `  ${s}`), takesEffect(fleet)].join('\n'));
}

export const configSet: CommandDef = {
  name: 'config set',
  summary: "set a fleet's config values and secret references (a new signed version)",
  usage: 'config set FLEET KEY=VALUE... [--secret KEY=REF]... [--json]',
  examples: [
    'kiln config set web LOG_LEVEL=debug FEATURE_X=on',
    'kiln config set web --secret DB_PASSWORD=aws-ssm:/shop/db-password --secret API_KEY=file:/etc/shop/api-key',
  ],
  details:
    "Each app process of the fleet gets every key as an environment variable. A VALUE is kept in the bucket as it\n" +
    'is: never put a secret there. A secret is given by reference (REF), resolved on each host when it installs:\n' +
    '  file:/ABSOLUTE/PATH              a file on the host (not readable by other users: chmod o-r); one trailing newline dropped\n' +
    "  env:NAME                         a variable of the agent's environment\n" +
    '  aws-ssm:/PATH/NAME               an SSM parameter (SecureString decrypted), with the host\'s AWS role\n' +
    '  aws-secretsmanager:NAME-or-ARN   a Secrets Manager secret (its SecretString), with the host\'s AWS role\n' +
    'Setting a key that was a secret makes it a plain value, and the other way round. Every change is a new\n' +
    'version (seq + 1) signed by the controller; `kiln deploy FLEET --config` rolls it out. docs/config.md has the details.',
  options: {
    secret: { type: 'string', multiple: true, value: 'KEY=REF', help: 'a secret by reference: file:/PATH, env:NAME, aws-ssm:/PATH, aws-secretsmanager:NAME (repeatable)' },
    ...API_OPTIONS,
    ...JSON_OPTION,
  },
  positionals: [1, MAX_ARGS],
  async run(ctx, flags, [fleet, ...args]) {
    const set = pairs(args, 'argument', 'KEY=VALUE');
    const secrets = pairs(list(flags, 'secret'), '--secret', 'KEY=REF (a secret is set by reference, never by its value)');
    if (!args.length && !Object.keys(secrets).length) throw new KilnError('KILN_USAGE', 'config set needs at least one KEY=VALUE or --secret KEY=REF');
    const plainSecrets = Object.keys(set).filter((k) => SECRET_LIKE.test(k));
    if (plainSecrets.length) {
      note(ctx, `warning: ${plainSecrets.join(', ')} ${plainSecrets.length === 1 ? 'looks' : 'look'} like a secret, set as a plain value (kept in the bucket as it is); a secret goes by reference: --secret KEY=REF`);
    }
    await publish(ctx, flags, fleet!, { ...(args.length ? { set } : {}), ...(Object.keys(secrets).length ? { secrets } : {}) }, [
      ...(args.length ? [`set      ${Object.keys(set).join(', ')}`] : []),
      ...(Object.keys(secrets).length ? [`secrets  ${Object.entries(secrets).map(([k, ref]) => `${k} -> ${ref}`).join(', ')}`] : []),
    ]);
  },
};

export const configUnset: CommandDef = {
  name: 'config unset',
  summary: "remove keys (values or secrets) from a fleet's config (a new signed version)",
  usage: 'config unset FLEET KEY... [--json]',
  examples: ['kiln config unset web FEATURE_X', 'kiln config unset web LOG_LEVEL DB_PASSWORD'],
  details: 'A key the config does not have is refused (KILN_CONFIG_KEY_UNKNOWN); nothing is published then.',
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [2, MAX_ARGS],
  async run(ctx, flags, [fleet, ...keys]) {
    await publish(ctx, flags, fleet!, { unset: keys }, [`unset    ${keys.join(', ')}`]);
  },
};

/** A value on one table row: control characters escaped, a long one cut (--json has it whole). */
function cell(value: string): string {
  const shown = JSON.stringify(value).slice(1, -1);
  return shown.length > 60 ? `${shown.slice(0, 59)}…` : shown;
}

export const configShow: CommandDef = {
  name: 'config show',
  summary: "show a fleet's current config: values, and secrets as their references",
  usage: 'config show FLEET [--json]',
  examples: ['kiln config show web', 'kiln config show web --json'],
  details: "Secrets show as their references only: the controller never holds a secret's value.",
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const { config } = await (await openApi(flags, ctx)).get<ConfigBody>(configRoute(fleet!));
    if (ctx.json) return printJson(ctx, config);
    const rows = [...Object.entries(config.values).map(([k, v]) => [k, cell(v), 'value']), ...Object.entries(config.secrets).map(([k, ref]) => [k, ref, 'secret'])].sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
    out(ctx, heading(config));
    out(ctx, rows.length ? formatTable(['KEY', 'VALUE / REF', 'KIND'], rows) : 'no keys (all unset)');
  },
};

export const configHistoryCommand: CommandDef = {
  name: 'config history',
  summary: "list the versions of a fleet's config and the keys each changed",
  usage: 'config history FLEET [--json]',
  examples: ['kiln config history web', 'kiln config history web --json'],
  details: 'SET holds the keys a version added or changed, UNSET those it removed, each against the version before.',
  options: { ...API_OPTIONS, ...JSON_OPTION },
  positionals: [1, 1],
  async run(ctx, flags, [fleet]) {
    const { versions } = await (await openApi(flags, ctx)).get<ConfigHistory>(`${configRoute(fleet!)}/history`);
    if (ctx.json) return printJson(ctx, versions);
    if (!versions.length) return out(ctx, `fleet ${fleet} has no config yet: \`kiln config set ${fleet} KEY=VALUE\` publishes its first version`);
    out(ctx, formatTable(['SEQ', 'CREATED', 'SHA256', 'SET', 'UNSET'], versions.map((v) => [String(v.seq), v.createdAt, v.sha256.slice(0, 12), v.set.join(', ') || '-', v.unset.join(', ') || '-'])));
    out(ctx, `a version ${takesEffect(fleet!)}`);
  },
};
