import path from 'node:path';
import { JSON_OPTION, type CommandDef } from '../cli-command.js';
import { out, printJson, str } from '../cli-context.js';
import { kilnCacheDir } from '../../providers/nspawn/nspawn-rootfs.js';
import { createNspawnProvider } from '../../providers/nspawn/nspawn-provider.js';

export const imageBaseCommand: CommandDef = {
  name: 'image base',
  summary: 'build or reuse the nspawn base image: the cached Debian tree with systemd plus the agent (root, Linux)',
  usage: 'image base [--dir DIR] [--mirror URL] [--json]',
  examples: ['sudo kiln image base', 'sudo kiln image base --mirror http://deb.debian.org/debian'],
  details:
    'The Debian tree is debootstrapped once (about a minute) into the cache, ~/.cache/kiln or KILN_CACHE_DIR; the image (that tree linked, plus the agent bundle and its unit) lands in DIR/images. Needs root, systemd-nspawn and debootstrap: apt-get install systemd-container debootstrap. See docs/providers.md.',
  options: {
    dir: { type: 'string', value: 'DIR', help: "the nspawn provider's directory (default .kiln/nspawn)" },
    mirror: { type: 'string', value: 'URL', help: "Debian mirror for a first build of the tree (default: this host's apt mirror)" },
    ...JSON_OPTION,
  },
  positionals: [0, 0],
  async run(ctx, flags) {
    const mirror = str(flags, 'mirror');
    const provider = createNspawnProvider({
      dir: path.resolve(ctx.io.cwd, str(flags, 'dir') ?? path.join(ctx.home, 'nspawn')),
      cacheDir: kilnCacheDir(ctx.io.env.KILN_CACHE_DIR),
      log: ctx.log,
      ...(mirror ? { mirror } : {}),
    });
    const image = await provider.defaultImage!();
    if (ctx.json) return printJson(ctx, image);
    out(ctx, `base image ${image.id} (agent ${image.tags['kiln:agent-version']}, ${image.tags['kiln:rootfs']})`);
  },
};
