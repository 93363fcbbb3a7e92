import { readConfig, type BoundConfig, type ConfigStore, type HostConfig, type PublicKey } from '@kiln/shared';

/** Reads a fleet config version for the install routine: what a channel pointer or a command binds to a release. */
export type ConfigLoader = (ref: BoundConfig) => Promise<HostConfig>;

/**
 * The version a pointer or command names, verified with the pinned keys: its signature, the digest
 * named, and that it is this app's config and the named fleet's (one fleet's document copied under
 * another's key is refused). Values and references only: secrets are resolved when the app starts.
 */
export function configLoader(store: ConfigStore, app: string, keys: () => PublicKey[]): ConfigLoader {
  return async (ref) => {
    const { config, sha256 } = await readConfig(store, app, ref.fleet, ref.seq, keys(), { sha256: ref.sha256 });
    return { seq: config.seq, sha256, values: config.values, secrets: config.secrets };
  };
}
