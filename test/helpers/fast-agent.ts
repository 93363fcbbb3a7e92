// Periods short enough that a test sees a heartbeat, a reconnect or a poll within seconds: the
// defaults (heartbeat 15 s, reconnect backoff up to 30 s, poll 60 s) would make each case wait minutes.

/** A test agent's connection: a ping every 500 ms (a silent controller is dropped after 1 s), reconnects at most 1 s apart. */
export const FAST_AGENT = { heartbeatMs: 500, backoffCapMs: 1_000 };

/**
 * What a test controller writes into the agents it launches: FAST_AGENT, and a channel poll every 2 s
 * while the controller is away. Only launched agents poll this fast: an agent a test drives by
 * commands would otherwise put the channel's release back over what the test installed.
 */
export const FAST_LAUNCHED_AGENT = { ...FAST_AGENT, pollIntervalMs: 2_000 };

/** How often a test controller pings its agents. */
export const FAST_CONTROLLER_HEARTBEAT_MS = 1_000;
