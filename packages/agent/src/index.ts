export { type Agent, type AgentEvent, createAgent } from './agent.js';
export { AgentConfig, type AgentConfigInput, parseAgentConfig } from './agent-config.js';
export { stateReader } from './agent-report.js';
export { sealImage } from './agent-seal.js';
export { checkTree, type DigestCache, rememberDigests } from './tree-check.js';

export { createAgentLogs, frameBatches, MAX_LOG_STREAMS } from './agent-logs.js';
