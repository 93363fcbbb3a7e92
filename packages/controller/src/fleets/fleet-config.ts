import { KilnError, configChanges, configHistory, latestConfig, publishConfig, type ConfigChange, type ConfigStore, type Logger, type PrivateKey, type PublicKey, type VerifiedConfig } from '@kiln/shared';
import type { Fleet } from './fleet-model.js';

/**
 * A fleet's config version as the API shows it: plain values, and secrets as their references.
 * The controller never holds a secret's value: hosts resolve the references themselves.
 */
export interface ConfigView {
  app: string;
  fleet: string;
  seq: number;
  /** the sha256 of the signed document's exact bytes (with `seq`, what a deployment names) */
  sha256: string;
  createdAt: string;
  values: Record<string, string>;
  secrets: Record<string, string>;
}

/** One version in a fleet's config history: the keys it set (added or changed) and unset, against the one before. */
export interface ConfigVersion {
  seq: number;
  createdAt: string;
  sha256: string;
  set: string[];
  unset: string[];
}

/** The fleets' config documents (docs/config.md), signed with the controller's key. */
export interface FleetConfigs {
  /** the fleet's latest version; undefined when it has none yet */
  current(fleet: Fleet): Promise<ConfigView | undefined>;
  /** publishes the change as the next version; one publish at a time per fleet */
  publish(fleet: Fleet, change: ConfigChange): Promise<ConfigView>;
  /** every version, oldest first */
  history(fleet: Fleet): Promise<ConfigVersion[]>;
}

const view = ({ config, sha256 }: Pick<VerifiedConfig, 'config' | 'sha256'>): ConfigView => ({
  app: config.app,
  fleet: config.fleet,
  seq: config.seq,
  sha256,
  createdAt: config.createdAt,
  values: config.values,
  secrets: config.secrets,
});

export function createFleetConfigs(o: { store: ConfigStore; signingKey?: PrivateKey; trustedKeys: PublicKey[]; log: Logger; now: () => Date }): FleetConfigs {
  const log = o.log.child({ module: 'fleet-config' });
  // Two publishes of one fleet at once would both write seq N + 1: this controller takes them in turn.
  const publishing = new Map<string, Promise<unknown>>();

  return {
    async current(fleet) {
      const latest = await latestConfig(o.store, fleet.app, fleet.name, o.trustedKeys);
      return latest && view(latest);
    },
    async publish(fleet, change) {
      const key = o.signingKey;
      if (!key) throw new KilnError('KILN_KEY_INVALID', 'the controller has no release signing key to sign config versions with; start it with one (`kiln keys generate`)');
      const before = publishing.get(fleet.name);
      const run = (async () => {
        // after the publish before it, however that ended (its caller has its error)
        await Promise.allSettled([before]);
        return publishConfig({ store: o.store, app: fleet.app, fleet: fleet.name, ...change, key, keys: o.trustedKeys, now: o.now });
      })();
      publishing.set(fleet.name, run);
      try {
        const published = await run;
        // The keys only: plain values are no secrets, but a log is no place for a 32 KiB one either.
        log.info({ fleet: fleet.name, seq: published.config.seq, set: Object.keys(change.set ?? {}), secrets: Object.keys(change.secrets ?? {}), unset: change.unset ?? [] }, 'config published');
        return view(published);
      } finally {
        if (publishing.get(fleet.name) === run) publishing.delete(fleet.name);
      }
    },
    async history(fleet) {
      const versions = await configHistory(o.store, fleet.app, fleet.name, o.trustedKeys);
      return versions.map((v, i) => ({ seq: v.config.seq, createdAt: v.config.createdAt, sha256: v.sha256, ...configChanges(versions[i - 1]?.config, v.config) }));
    },
  };
}
