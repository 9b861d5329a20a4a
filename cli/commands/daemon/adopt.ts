import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("adopt")
    .description(
      "as root: move an existing identity (its key and auth.json) into the Nest's HOME and log in again with the moved key",
    )
    .argument("<dir>", "the apes config directory holding auth.json (e.g. /home/ops/.config/apes)")
    .addHelpText(
      "after",
      `
For a daemon identity that lived in someone's HOME: the key (auth.json's key_path, or id_ed25519
in <dir>) and config.toml move to $(LOCALSTATEDIR)/lib/apes-nest/.config/apes, owned by
_apes-nest, and the Nest logs in again with the key at its new place, so the session never points
at a key path that no longer exists (the silent expiry a moved HOME caused elsewhere). The old
key and auth.json are removed once the new login worked.

Examples:
  $ sudo apes daemon adopt /home/ops/.config/apes
  $ sudo apes --json daemon adopt /root/.config/apes | jq -r .key_path`,
    )
    .action(async (dir: string) => {
      await daemonAdopt(getContext(), dir);
    });
}

export async function daemonAdopt(ctx: Context, dir: string): Promise<void> {
  const [
    host,
    fs,
    { join, resolve },
    { spawnSync },
    keys,
    { parseSession },
    { printData },
    { CliError, configError },
    { visible },
  ] = await Promise.all([
    import("../../daemon/host.ts"),
    import("node:fs"),
    import("node:path"),
    import("node:child_process"),
    import("../../../protocol/keys.ts"),
    import("../../../client/session-store.ts"),
    import("../../output.ts"),
    import("../../errors.ts"),
    import("../../../protocol/display.ts"),
  ]);
  host.requireRoot("apes daemon adopt");
  const layout = host.nestLayout();
  const from = resolve(dir);
  const authPath = join(from, "auth.json");
  let session: ReturnType<typeof parseSession>;
  try {
    session = parseSession(fs.readFileSync(authPath, "utf8"), authPath);
  } catch (e) {
    throw configError(`cannot read ${authPath}: ${(e as Error).message}`);
  }
  const candidates = [session.key_path, join(from, "id_ed25519")].filter(
    (p): p is string => typeof p === "string",
  );
  let keyFile: string | undefined;
  let keyText = "";
  for (const c of candidates) {
    try {
      const text = fs.readFileSync(c, "utf8");
      const fp = keys.fingerprint(keys.parsePrivateKey(text));
      if (!session.key_fingerprint || fp === session.key_fingerprint) {
        keyFile = c;
        keyText = text;
        break;
      }
    } catch {
      // not there, or not this identity's key
    }
  }
  if (!keyFile)
    throw configError(
      `no key of ${visible(session.email)} found (looked at ${candidates.join(", ")})`,
      "the key whose fingerprint auth.json records must be in that directory or at its key_path",
    );

  const { user } = host.ensureSystemUser(host.NEST_USER, layout.home);
  host.ownedDir(layout.home, user);
  host.ownedDir(join(layout.home, ".config"), user);
  host.ownedDir(layout.configDir, user);
  for (const d of [".local", ".local/state", ".local/state/apes"]) host.ownedDir(join(layout.home, d), user);
  const tmp = `${layout.keyPath}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, keyText, { mode: 0o600 });
  fs.chownSync(tmp, user.uid, user.gid);
  fs.renameSync(tmp, layout.keyPath);
  host.ensureKey(layout.keyPath, user, session.email);
  const cfgFrom = join(from, "config.toml");
  if (fs.existsSync(cfgFrom)) {
    const cfgTo = join(layout.configDir, "config.toml");
    fs.copyFileSync(cfgFrom, cfgTo);
    fs.chownSync(cfgTo, user.uid, user.gid);
    fs.chmodSync(cfgTo, 0o600);
  }
  // The login runs as _apes-nest itself, so auth.json is its own file and records the new key path.
  const login = spawnSync(
    process.execPath,
    ["--json", "login", session.email, "--key", layout.keyPath, "--idp", session.idp],
    {
      uid: user.uid,
      gid: user.gid,
      env: { HOME: layout.home, PATH: "/usr/bin:/bin", LANG: ctx.env.LANG ?? "C.UTF-8" },
      cwd: layout.home,
      encoding: "utf8",
      timeout: 60_000,
    },
  );
  if (login.status !== 0)
    throw new CliError(
      `the login with the moved key failed: ${visible((login.stderr ?? "").trim().split("\n")[0] ?? "", { max: 300 })}`,
      {
        exitCode: 77,
        hint: `the key is at ${layout.keyPath}; the old files were left in place`,
      },
    );
  fs.rmSync(authPath, { force: true });
  if (resolve(keyFile) !== layout.keyPath) {
    fs.rmSync(keyFile, { force: true });
    fs.rmSync(`${keyFile}.pub`, { force: true });
  }
  printData(
    ctx,
    {
      email: session.email,
      idp: session.idp,
      key_path: layout.keyPath,
      moved_from: keyFile,
      user: user.name,
    },
    () =>
      `adopted ${session.email}: key ${keyFile} -> ${layout.keyPath} (owned by ${user.name}); logged in again with it`,
  );
}
