/**
 * The version of the agent this workspace builds. The agent reports it; the controller keys bakes on it
 * (an image holds the agent, so a new agent means a new image). Here, not in @kiln/agent, so that the
 * controller's server need not load the agent package for one constant.
 */
export const AGENT_VERSION = '0.4.0';
