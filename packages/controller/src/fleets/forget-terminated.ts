import type { Provider } from '../providers/provider.js';
import type { AgentHub } from './agent-hub.js';

/**
 * The provider, whose `terminate` also drops the hub's record of each instance: a terminated
 * instance is gone, not unreachable, and its record would otherwise stay for the controller's life.
 * Every caller (rollouts, bakes, heal, fleet delete) terminates through it.
 */
export function forgetTerminated<P extends Provider>(provider: P, hub: () => AgentHub): P {
  return {
    ...provider,
    async terminate(ids: string[]) {
      await provider.terminate(ids);
      hub().forget(ids);
    },
  };
}
