export * from './agent.js';
export * from './agent-config.js';
export * from './agent-report.js';
export * from './agent-seal.js';
export * from './image-marker.js';
export * from './tree-check.js';
export { runAgentCli, formatReport, AGENT_HELP } from './agent-cli.js';
