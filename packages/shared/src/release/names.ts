import { z } from 'zod';
import { KilnError } from '../errors/kiln-error.js';

// Names become S3 keys and directory names: a strict pattern before they touch any path.
const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const VERSION = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$/;

export type NameKind = 'app' | 'channel' | 'version' | 'fleet';

export function isValidName(kind: NameKind, value: string): boolean {
  const re = kind === 'version' ? VERSION : NAME;
  return re.test(value) && !value.includes('..');
}

export function checkName(kind: NameKind, value: string): string {
  if (!isValidName(kind, value)) {
    const rule =
      kind === 'version'
        ? 'letters, digits, ".", "_", "+", "-", starting with a letter or digit, at most 63 characters, no ".."'
        : 'lower-case letters, digits and "-", starting with a letter or digit, at most 63 characters';
    throw new KilnError('KILN_NAME_INVALID', `invalid ${kind} name ${JSON.stringify(value)}: use ${rule}`);
  }
  return value;
}

// The same rules as schema pieces, for every message and record that carries a name.
const nameOf = (kind: NameKind) => z.string().refine((v) => isValidName(kind, v), `invalid ${kind} name`);
export const AppName = nameOf('app');
export const ChannelName = nameOf('channel');
export const VersionName = nameOf('version');
/** A fleet's name: the controller's fleets, and the config documents kept per fleet. */
export const FleetName = nameOf('fleet');

/** A process of an app (`web`, `worker`): it names a systemd unit and supervisor files, so as strict as an app's name. */
export const ProcessName = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'a process name: lower-case letters, digits and "-", starting with a letter, at most 31 characters');
