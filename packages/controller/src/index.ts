export { runCli, COMMANDS, mainHelp, commandHelp } from './cli.js';
export { startEmbeddedS3, type EmbeddedS3, type EmbeddedS3Options } from './embedded-s3.js';
export { hostDebianMirror, mirrorFromAptSources, DEFAULT_DEBIAN_MIRROR } from './debian-mirror.js';
export { checkNspawnHost, nspawnHostProblem, type NspawnTools } from './nspawn-host.js';
export { ensureBaseRootfs, kilnCacheDir, BASE_ROOTFS_RECIPE, type EnsureBaseRootfsOptions } from './nspawn-rootfs.js';
export { bootMachine, type BootMachineOptions, type Machine, type MachineBind, type MachineExit } from './nspawn-machine.js';
export { type MachineExecOptions, type MachineExecResult } from './nspawn-exec.js';
export { createMachineGroup, type MachineGroup } from './nspawn-group.js';
