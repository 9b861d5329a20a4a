import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export interface ProvisionOptions {
  owner: string;
  idp?: string;
  env?: string[];
  secret?: string[];
  caFile?: string;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("provision")
    .description("as root: create an agent's Unix user, HOME and key, and record what it runs (idempotent)")
    .argument("<name>", "the agent's name: its Unix user and the first part of its identity")
    .argument("<argv...>", "after --: the agent's program (absolute path) and its arguments")
    .requiredOption("--owner <email>", "the human the agent belongs to (approves its grants)")
    .option("--idp <url>", "the IdP the agent logs in at (recorded for `apes agents run`)")
    .option("--env <name>", "an environment variable name the agent may receive (repeatable)", collect)
    .option("--ca-file <pem>", "an extra CA the agent trusts for its IdP (written to its config.toml)")
    .option(
      "--secret <name>",
      "a secret from $(SYSCONFDIR)/apes/secrets/ to hand the agent (repeatable)",
      collect,
    )
    .addHelpText(
      "after",
      `
Normally not typed by hand: the Nest runs it through the elevation path, so the owner approves
this exact command (and with it the agent's argv):
  apes --reason "spawn bot1 for alice" -- apes agents provision bot1 --owner alice@example.com -- /usr/bin/bot --serve

Creates the system user <name> (no shell), HOME $(LOCALSTATEDIR)/lib/apes-agents/<name> (0700)
with an Ed25519 key, copies the named secrets there (0400, readable by the agent only), and writes
$(SYSCONFDIR)/apes/agents/<name>.json (root:root 0644). Run again with the same spec: nothing
changes; with another spec: refused (remove the agent first). Prints the agent's public key.

Examples:
  $ sudo apes agents provision bot1 --owner alice@example.com -- /usr/bin/bot --serve
  $ sudo apes --json agents provision bot1 --owner alice@example.com --secret openai -- /usr/bin/bot`,
    )
    .action(async (name: string, argv: string[], options: ProvisionOptions) => {
      await agentsProvision(getContext(), name, argv, options);
    });
}

export async function agentsProvision(
  ctx: Context,
  name: string,
  argv: string[],
  options: ProvisionOptions,
): Promise<void> {
  const [
    host,
    spec,
    fs,
    { join },
    { parseSpawnSpec, SECRET_NAME },
    { printData },
    { CliError, usageError, configError },
  ] = await Promise.all([
    import("../../daemon/host.ts"),
    import("../../daemon/agent-spec.ts"),
    import("node:fs"),
    import("node:path"),
    import("../../../protocol/troop.ts"),
    import("../../output.ts"),
    import("../../errors.ts"),
  ]);
  host.requireRoot("apes agents provision");
  const layout = host.nestLayout();
  spec.checkAgentName(name);
  const parsed = parseSpawnSpec({
    owner: options.owner,
    argv,
    env: options.env ?? [],
    secrets: options.secret ?? [],
  });
  if (!parsed.ok) throw usageError(parsed.reason);
  const want = parsed.value;
  if (
    options.idp !== undefined &&
    !/^https:\/\/|^http:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(options.idp)
  )
    throw usageError("--idp must be an https URL");
  const home = spec.agentHome(layout, name);
  const email = spec.agentEmail(name, want.owner);

  // An existing user is ours only when its HOME is the agent HOME: `provision root` must never touch root.
  const existing = host.lookupUser(name);
  if (existing && existing.home !== home)
    throw new CliError(`the user ${name} exists and is not an agent this Nest made (HOME ${existing.home})`, {
      exitCode: 77,
    });
  const before = spec.readAgentSpec(layout, name);
  if (before && !spec.sameSpec(before, want))
    throw configError(
      `agent ${name} exists with another spec`,
      `remove it first: apes agents deprovision ${name}`,
    );
  for (const s of want.secrets) {
    if (!SECRET_NAME.test(s)) throw usageError(`bad secret name ${s}`);
    const file = join(layout.secrets, s);
    const st = fs.lstatSync(file, { throwIfNoEntry: false });
    if (!st?.isFile() || st.uid !== 0 || (st.mode & 0o077) !== 0)
      throw configError(
        `secret ${s}: ${file} must be a root-owned file (0600)`,
        `create it: install -m 0600 -o root /dev/stdin ${file}`,
      );
  }

  fs.mkdirSync(layout.agentsHome, { recursive: true, mode: 0o755 });
  const { user, created } = host.ensureSystemUser(name, home);
  host.ownedDir(home, user);
  host.ownedDir(join(home, ".config"), user);
  host.ownedDir(join(home, ".config", "apes"), user);
  const key = host.ensureKey(join(home, ".config", "apes", "id_ed25519"), user, email);
  if (want.secrets.length > 0) {
    const dir = join(home, ".config", "apes", "secrets");
    host.ownedDir(dir, user);
    for (const s of want.secrets) {
      const target = join(dir, s);
      const tmp = `${target}.${process.pid}.tmp`;
      fs.copyFileSync(join(layout.secrets, s), tmp);
      fs.chownSync(tmp, user.uid, user.gid);
      fs.chmodSync(tmp, 0o400);
      fs.renameSync(tmp, target);
    }
  }
  if (options.caFile !== undefined) {
    if (!options.caFile.startsWith("/") || /[\0-\x1f"\\]/.test(options.caFile))
      throw usageError("--ca-file must be an absolute path");
    const cfg = join(home, ".config", "apes", "config.toml");
    fs.writeFileSync(cfg, `ca_file = ${JSON.stringify(options.caFile)}\n`, { mode: 0o600 });
    fs.chownSync(cfg, user.uid, user.gid);
  }
  const record = {
    name,
    email,
    ...want,
    ...(options.idp ? { idp: options.idp.replace(/\/+$/, "") } : before?.idp ? { idp: before.idp } : {}),
    public_key: key.publicLine,
    fingerprint: key.fingerprint,
  };
  fs.mkdirSync(layout.agentSpecs, { recursive: true, mode: 0o755 });
  const file = spec.specPath(layout, name);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o644 });
  fs.chownSync(tmp, 0, 0);
  fs.renameSync(tmp, file);
  printData(
    ctx,
    { ...record, uid: user.uid, home, created_user: created, created_key: key.created },
    () =>
      `${created ? "provisioned" : "kept"} agent ${name} (uid ${user.uid}, HOME ${home})\nidentity ${email}, key ${key.fingerprint}\n${key.publicLine}`,
  );
}
