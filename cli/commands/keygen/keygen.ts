import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export interface KeygenOptions {
  out?: string;
  comment?: string;
  force?: boolean;
}

export function register(program: Command, getContext: GetContext): void {
  program
    .command("keygen")
    .description("create an Ed25519 key pair (OpenSSH format) for `apes login`")
    .option("--out <path>", "private key file (the public key goes to <path>.pub)", undefined)
    .option("--comment <text>", "comment in the .pub line; use your email so `apes login --key` finds it")
    .option("--force", "overwrite existing key files")
    .addHelpText(
      "after",
      `
Default --out: $XDG_CONFIG_HOME/apes/id_ed25519 (the first place \`apes login\` looks).
The private key is written 0600 and is not encrypted: apes signs unattended. The public
key line is printed on stdout: register it at your IdP, or let your owner enroll you
with \`apes agents add --name <name> --key <line>\`.

Examples:
  $ apes keygen --comment alice@example.com
  $ apes keygen --out ~/.ssh/apes_agent --comment bot+agent@example.com
  $ apes --json keygen --out /tmp/k --force`,
    )
    .action(async (options: KeygenOptions) => {
      await keygen(getContext(), options);
    });
}

export async function keygen(ctx: Context, options: KeygenOptions): Promise<void> {
  const [
    { generateKeyPairSync },
    fs,
    { dirname },
    os,
    keys,
    { expandPath },
    { apesKeyPath },
    { CliError, usageError },
  ] = await Promise.all([
    import("node:crypto"),
    import("node:fs/promises"),
    import("node:path"),
    import("node:os"),
    import("../../../protocol/keys.ts"),
    import("../../auth/keys.ts"),
    import("../../../client/keys.ts"),
    import("../../errors.ts"),
  ]);
  const out = options.out ? expandPath(ctx, options.out) : apesKeyPath(ctx);
  const pubPath = `${out}.pub`;
  const comment = options.comment ?? `${ctx.env.USER ?? "apes"}@${os.hostname()}`;
  if (/[\r\n]/.test(comment)) throw usageError("--comment must be one line");
  if (!options.force) {
    for (const p of [out, pubPath]) {
      const exists = await fs.stat(p).then(
        () => true,
        () => false,
      );
      if (exists)
        throw usageError(`${p} already exists`, "pick another --out, or pass --force to overwrite it");
    }
  }
  const { privateKey } = generateKeyPairSync("ed25519");
  const publicLine = keys.formatSshPublicKey(privateKey, comment);
  const fp = keys.fingerprint(privateKey);
  try {
    await fs.mkdir(dirname(out), { recursive: true, mode: 0o700 });
    // Private key via temp file + rename: never a half-written key, never world-readable.
    const tmp = `${out}.${process.pid}.tmp`;
    await fs.writeFile(tmp, keys.formatOpenSshPrivateKey(privateKey, comment), { mode: 0o600, flag: "wx" });
    await fs.chmod(tmp, 0o600);
    await fs.rename(tmp, out);
    await fs.writeFile(pubPath, `${publicLine}\n`, { mode: 0o644 });
  } catch (e) {
    throw new CliError(`cannot write the key: ${(e as Error).message}`, {
      hint: "check the directory of --out",
    });
  }
  ctx.io.stderr.write(`wrote ${out} (private, 0600) and ${pubPath}\nfingerprint ${fp}\n`);
  printData(
    ctx,
    { path: out, public_key_path: pubPath, public_key: publicLine, fingerprint: fp },
    () => publicLine,
  );
}
