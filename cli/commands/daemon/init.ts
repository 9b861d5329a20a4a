import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export interface DaemonInitOptions {
  idp?: string;
  troop?: string;
  troopAudience?: string;
  owner?: string;
  host?: string;
  delegation?: string;
  caFile?: string;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("init")
    .description(
      "as root, once: create the Nest's service user, its HOME and its own key; print how to enroll it",
    )
    .option("--idp <url>", "the IdP the Nest logs in at")
    .option("--troop <url>", "the control plane (apes troop serve) it connects to")
    .option(
      "--troop-audience <aud>",
      "the troop's client id (aud of the Nest's troop token; default: its host)",
    )
    .option("--owner <email>", "the human who will own the Nest (names its identity in the printed commands)")
    .option("--host <name>", "this machine's name in the Nest's identity (default: the hostname)")
    .option("--delegation <id>", "record the owner's delegation (printed by `apes delegate`) in the settings")
    .option("--ca-file <pem>", "an extra CA for the IdP and the troop (test and private CAs)")
    .addHelpText(
      "after",
      `
Creates the system user _apes-nest (no shell, no login) with HOME $(LOCALSTATEDIR)/lib/apes-nest
(0700) and an Ed25519 key there, and writes $(SYSCONFDIR)/apes/nest.toml. Run again to change
settings: the user and the key are kept. The Nest is its own ape: its owner enrolls it with the
printed \`apes agents add\` and approves one delegation, so it can enroll the agents the owner asks
for without ever holding the owner's token.

Examples:
  $ sudo apes daemon init --idp https://id.example.com --troop https://troop.example.com --owner alice@example.com
  $ sudo apes daemon init --delegation 0b5e...-...   # after the owner ran \`apes delegate\`
  $ sudo apes --json daemon init | jq -r .public_key`,
    )
    .action(async (options: DaemonInitOptions) => {
      await daemonInit(getContext(), options);
    });
}

export async function daemonInit(ctx: Context, options: DaemonInitOptions): Promise<void> {
  const [
    host,
    fs,
    { parseNestConfig, serializeNestConfig, NestConfigError },
    { printData },
    { usageError, configError },
    { canonicalIdentity },
    { CLI_TOKEN_AUDIENCE: CLI_AUDIENCE },
  ] = await Promise.all([
    import("../../daemon/host.ts"),
    import("node:fs"),
    import("../../../nest/config.ts"),
    import("../../output.ts"),
    import("../../errors.ts"),
    import("../../../protocol/names.ts"),
    import("../../../protocol/types.ts"),
  ]);
  host.requireRoot("apes daemon init");
  const layout = host.nestLayout();
  const hostName = options.host ?? host.hostPart();
  if (!/^[a-z0-9][a-z0-9-]{0,29}$/.test(hostName))
    throw usageError("--host must be 1-30 lowercase letters, digits or dashes");
  const owner = options.owner === undefined ? undefined : canonicalIdentity(options.owner);
  if (options.owner !== undefined && !owner) throw usageError("--owner must be an email");

  const defaults = {
    shim: `${layout.installed.prefix}/bin/apes`,
    exec: `${layout.installed.prefix}/libexec/apes/apes`,
  };
  let previous = parseNestConfig("", defaults);
  try {
    previous = parseNestConfig(fs.readFileSync(layout.config, "utf8"), defaults);
  } catch (e) {
    if (e instanceof NestConfigError)
      throw configError(`${layout.config}: ${e.message}`, "fix or remove it, then run init again");
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  const name = `nest-${hostName}`;
  const email = owner ? `${name}+agent@${owner.slice(owner.lastIndexOf("@") + 1)}` : previous.email;
  let troopAudience = options.troopAudience ?? previous.troopAudience;
  if (!troopAudience && options.troop) troopAudience = new URL(options.troop).host;
  const next = {
    ...previous,
    ...(options.idp ? { idp: options.idp } : {}),
    ...(options.troop ? { troop: options.troop } : {}),
    ...(troopAudience ? { troopAudience } : {}),
    ...(email ? { email } : {}),
    ...(options.delegation ? { delegation: options.delegation } : {}),
    ...(options.caFile ? { caFile: options.caFile } : {}),
  };
  const text = serializeNestConfig(next);
  try {
    parseNestConfig(text, defaults); // the same checks run refuses with
  } catch (e) {
    throw usageError((e as Error).message);
  }

  const { user, created } = host.ensureSystemUser(host.NEST_USER, layout.home);
  host.ownedDir(layout.home, user);
  host.ownedDir(`${layout.home}/.config`, user);
  host.ownedDir(layout.configDir, user);
  for (const d of [".local", ".local/state", ".local/state/apes"]) host.ownedDir(`${layout.home}/${d}`, user);
  const key = host.ensureKey(layout.keyPath, user, email ?? `${name}@${hostName}`);
  fs.mkdirSync(`${layout.installed.sysconfdir}/apes`, { recursive: true, mode: 0o755 });
  const tmp = `${layout.config}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o644 });
  fs.chownSync(tmp, 0, 0);
  fs.renameSync(tmp, layout.config);

  const who = email ?? `${name}+agent@<your domain>`;
  const enroll = `apes agents add --name ${name} --key "${key.publicLine}"`;
  const delegate = `apes delegate --to ${who} --audience ${CLI_AUDIENCE} --approval always`;
  printData(
    ctx,
    {
      user: user.name,
      uid: user.uid,
      created_user: created,
      home: layout.home,
      key_path: layout.keyPath,
      created_key: key.created,
      public_key: key.publicLine,
      fingerprint: key.fingerprint,
      config: layout.config,
      ...(email ? { email } : {}),
      enroll,
      delegate,
    },
    () =>
      [
        `${created ? "created" : "kept"} ${user.name} (uid ${user.uid}), HOME ${layout.home}`,
        `${key.created ? "created" : "kept"} its key ${layout.keyPath} (${key.fingerprint})`,
        `settings in ${layout.config}`,
        "",
        "The owner enrolls the Nest as an agent they own:",
        `  ${enroll}`,
        "and lets it enroll the agents they ask for, acting for them (never with their token):",
        `  ${delegate}`,
        "then records the delegation id here:",
        "  sudo apes daemon init --delegation <id>",
      ].join("\n"),
  );
}
