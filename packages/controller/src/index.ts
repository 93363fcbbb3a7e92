export { runCli, COMMANDS, mainHelp, commandHelp } from './cli.js';
export { startEmbeddedS3, type EmbeddedS3, type EmbeddedS3Options } from './embedded-s3.js';
