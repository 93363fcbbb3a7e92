export { type Agent, type AgentEvent, type AgentOptions, createAgent } from './agent.js';
export { AgentConfig, type AgentConfigInput, configPath, loadAgentConfig, loadControllerCa, loadPinnedKeys, parseAgentConfig, underRoot } from './agent-config.js';
export { collectReport, type LiveFacts, recentResults, type ReportSources, stateReader, treeCheckOf } from './agent-report.js';
export { sealImage } from './agent-seal.js';
export { ImageMarker, imageMarkerPath, readImageMarker, writeImageMarker } from './image-marker.js';
export { checkTree, type DigestCache, rememberDigests, UNCHECKED } from './tree-check.js';
export { runAgentCli, formatReport, AGENT_HELP } from './agent-cli.js';

