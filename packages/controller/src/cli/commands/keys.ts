import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { KilnError, generateReleaseKeyPair } from '@kiln/shared';
import { out, printJson, str, type CliContext } from '../cli-context.js';
import { defaultKeyDir } from '../../local/local-files.js';
import { JSON_OPTION, type CommandDef } from '../cli-command.js';

async function writeNew(file: string, data: string, mode: number, force: boolean): Promise<void> {
  try {
    const fh = await open(file, force ? 'w' : 'wx', mode);
    await fh.writeFile(data);
    await fh.chmod(mode);
    await fh.close();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new KilnError('KILN_KEY_EXISTS', `${file} already exists; pass --force to replace it (releases signed with it will no longer verify)`);
    throw err;
  }
}

export const keysGenerate: CommandDef = {
  name: 'keys generate',
  summary: 'make an ed25519 release signing key pair',
  usage: 'keys generate [--out DIR] [--name NAME] [--force]',
  examples: ['kiln keys generate', 'kiln keys generate --out /etc/kiln/keys --name ci'],
  options: {
    out: { type: 'string', value: 'DIR', help: 'where to write NAME.key (mode 0600) and NAME.pub (default .kiln/keys)' },
    name: { type: 'string', value: 'NAME', help: 'file name stem (default "release")' },
    force: { type: 'boolean', help: 'replace existing key files' },
    ...JSON_OPTION,
  },
  positionals: [0, 0],
  async run(ctx: CliContext, flags) {
    const dir = path.resolve(ctx.io.cwd, str(flags, 'out') ?? defaultKeyDir(ctx.home));
    const name = str(flags, 'name') ?? 'release';
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new KilnError('KILN_USAGE', `--name ${JSON.stringify(name)}: use letters, digits, ".", "_" or "-"`);
    await mkdir(dir, { recursive: true });
    const pair = generateReleaseKeyPair();
    const keyFile = path.join(dir, `${name}.key`);
    const pubFile = path.join(dir, `${name}.pub`);
    await writeNew(keyFile, pair.privatePem, 0o600, !!flags.force);
    await writeNew(pubFile, pair.publicPem, 0o644, !!flags.force);
    if (ctx.json) return printJson(ctx, { keyId: pair.keyId, privateKey: keyFile, publicKey: pubFile });
    out(ctx, `key ${pair.keyId}\n  private ${keyFile} (0600: keep it secret; it signs releases)\n  public  ${pubFile} (pin it on every host that installs)`);
  },
};
