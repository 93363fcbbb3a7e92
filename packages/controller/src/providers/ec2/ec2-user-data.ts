import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KilnError, Sha256 } from '@kiln/shared';
import type { BootData } from '../provider.js';

/** EC2 refuses user data over 16 KiB, counted before base64. */
export const USER_DATA_MAX_BYTES = 16 * 1024;

const CONFIG_EOF = 'KILN_AGENT_JSON';
const UNIT_EOF = 'KILN_AGENT_UNIT';

export interface UserDataOptions {
  /** the agent's systemd unit written next to a bundle-installed agent; default: the unit shipped in @kiln/agent */
  agentUnit?: string;
}

/**
 * The boot script an EC2 instance runs once (cloud-init user data): it writes /etc/kiln/agent.json
 * with this instance's id and image id from IMDSv2, installs the agent bundle when the image has
 * no agent, and (re)starts the agent. Needs on the image: sh, curl, sha256sum, systemd, and the
 * AWS CLI only for a bundle without a presigned `url`.
 *
 * Two variables let a test run it off EC2: KILN_ROOT prefixes every path it writes, KILN_IMDS replaces
 * the metadata endpoint. On EC2 neither is set.
 */
export function renderUserData(boot: BootData, opts: UserDataOptions = {}): string {
  const { instanceId: _i, imageId: _m, ...agent } = boot.agent;
  const json = JSON.stringify(agent);
  const lines = [
    '#!/bin/sh',
    '# kiln boot script (EC2 user data). Its output is in /var/log/cloud-init-output.log.',
    'set -eu',
    'umask 022',
    'R="${KILN_ROOT:-}"',
    'IMDS="${KILN_IMDS:-http://169.254.169.254}"',
    'fail() { echo "kiln boot: $*" >&2; exit 1; }',
    'fetch() { curl -fsS --retry 10 --retry-connrefused --retry-delay 1 --max-time 30 "$@"; }',
    // IMDSv2 only: the launch sets HttpTokens=required, so a token comes first.
    `TOKEN=$(fetch -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token")`,
    'meta() { fetch -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$1"; }',
    'INSTANCE_ID=$(meta instance-id)',
    'IMAGE_ID=$(meta ami-id)',
    // Both ids go into JSON unquoted by the shell: only a prefix and hex digits may pass.
    'check_id() {',
    '  case "$2" in "$1"-*) ;; *) fail "unexpected id from IMDS: $2" ;; esac',
    '  case "${2#"$1"-}" in \'\'|*[!0-9a-f]*) fail "unexpected id from IMDS: $2" ;; esac',
    '}',
    'check_id i "$INSTANCE_ID"',
    'check_id ami "$IMAGE_ID"',
    'mkdir -p "$R/etc/kiln"',
    'CONFIG_TMP="$R/etc/kiln/.agent.json.$$"',
    // A quoted delimiter: the JSON is taken literally, no $ or ` expansion. JSON.stringify
    // escapes newlines, so no line of it can equal the delimiter.
    // The config holds the agent's credential: the file is 0600 from its creation on.
    '(',
    '  umask 077',
    `  cat > "$CONFIG_TMP" <<'${CONFIG_EOF}'`,
    json.slice(0, -1),
    CONFIG_EOF,
    `  printf '${json === '{}' ? '' : ','}"instanceId":"%s","imageId":"%s"}\\n' "$INSTANCE_ID" "$IMAGE_ID" >> "$CONFIG_TMP"`,
    ')',
    'mv -f "$CONFIG_TMP" "$R/etc/kiln/agent.json"',
    ...(boot.agentBundle ? bundleLines(boot.agentBundle, opts.agentUnit ?? shippedAgentUnit()) : []),
    'systemctl daemon-reload',
    'systemctl enable kiln-agent.service',
    // restart, not start: an image that has the agent may have started it at boot with the
    // config baked into the image, before this script wrote this instance's.
    'systemctl restart kiln-agent.service',
    '',
  ];
  const script = lines.join('\n');
  const bytes = Buffer.byteLength(script);
  if (bytes > USER_DATA_MAX_BYTES) {
    throw new KilnError('KILN_PROVIDER_FAILED', `ec2 user data is ${bytes} bytes, over EC2's limit of ${USER_DATA_MAX_BYTES} (the agent config, with the agent unit when a bundle is given, is too large)`);
  }
  return script;
}

function bundleLines(bundle: NonNullable<BootData['agentBundle']>, unit: string): string[] {
  if (!Sha256.safeParse(bundle.sha256).success) {
    throw new KilnError('KILN_PROVIDER_FAILED', `the agent bundle sha256 is not 64 lower-case hex digits: ${JSON.stringify(bundle.sha256)}`);
  }
  if (unit.split('\n').includes(UNIT_EOF)) throw new Error(`the agent unit contains the heredoc delimiter ${UNIT_EOF}`);
  const download = bundle.url
    ? `fetch --max-time 300 -o "$BUNDLE_TMP" ${shellQuote(bundle.url)}`
    : `command -v aws >/dev/null || fail "no AWS CLI on this image to fetch the agent bundle (give a presigned url)"\n  aws s3 cp --only-show-errors ${shellQuote(`s3://${bundle.bucket}/${bundle.key}`)} "$BUNDLE_TMP"`;
  return [
    'if [ ! -x "$R/usr/local/bin/kiln-agent" ]; then',
    '  mkdir -p "$R/usr/local/bin" "$R/etc/systemd/system"',
    '  BUNDLE_TMP="$R/usr/local/bin/.kiln-agent.$$"',
    `  ${download}`,
    `  printf '%s  %s\\n' ${bundle.sha256} "$BUNDLE_TMP" | sha256sum -c - >/dev/null || { rm -f "$BUNDLE_TMP"; fail "agent bundle sha256 mismatch"; }`,
    '  chmod 0755 "$BUNDLE_TMP"',
    '  mv -f "$BUNDLE_TMP" "$R/usr/local/bin/kiln-agent"',
    `  cat > "$R/etc/systemd/system/kiln-agent.service" <<'${UNIT_EOF}'`,
    unit.replace(/\n$/, ''),
    UNIT_EOF,
    '  chmod 0644 "$R/etc/systemd/system/kiln-agent.service"',
    'fi',
  ];
}

/** Single-quoted for sh: nothing inside expands. */
function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The unit file @kiln/agent ships (a packaged file, not code). */
function shippedAgentUnit(): string {
  return readFileSync(fileURLToPath(import.meta.resolve('@kiln/agent/units/kiln-agent.service')), 'utf8');
}
