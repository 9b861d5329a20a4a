import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("run")
    .description(
      "the Nest itself (what the systemd unit starts, as _apes-nest): take intents from the troop, supervise agents",
    )
    .addHelpText(
      "after",
      `
Reads $(SYSCONFDIR)/apes/nest.toml (see \`apes daemon init\`), logs in with its own key, connects
to the troop with its own token and carries out the intents addressed to it. Privileged steps go
through the setuid shim with grants the agent's owner approves. JSON log lines on stderr (never a
token). SIGTERM drains (the intent in flight finishes, agents are stopped); SIGHUP reloads the
settings. Refuses to run as root.

Examples:
  $ apes daemon run                           # as _apes-nest (the unit does this)
  $ sudo systemctl start apes-nest            # the usual way`,
    )
    .action(async () => {
      process.exitCode = await daemonRun(getContext());
    });
}

export async function daemonRun(ctx: Context): Promise<number> {
  const [
    host,
    fs,
    { join },
    cfg,
    { nestLogger },
    { IntentJournal },
    { AgentStateFile },
    { Nest },
    { elevationLauncher },
    tokens,
    { loginIfNeeded },
    { CliError },
    { VERSION },
  ] = await Promise.all([
    import("../../daemon/host.ts"),
    import("node:fs"),
    import("node:path"),
    import("../../../nest/config.ts"),
    import("../../../nest/log.ts"),
    import("../../../nest/journal.ts"),
    import("../../../nest/agent-state.ts"),
    import("../../../nest/nest.ts"),
    import("../../daemon/launcher.ts"),
    import("../../../nest/identity.ts"),
    import("../../../nest/identity.ts"),
    import("../../errors.ts"),
    import("../../version.ts"),
  ]);
  if (process.getuid?.() === 0)
    throw new CliError("apes daemon run never runs as root: it is its own ape (_apes-nest)", {
      exitCode: 77,
      hint: "set it up with `sudo apes daemon init`, then run it as _apes-nest (the unit does)",
    });
  const layout = host.nestLayout();
  const defaults = {
    shim: `${layout.installed.prefix}/bin/apes`,
    exec: `${layout.installed.prefix}/libexec/apes/apes`,
  };
  const load = () => {
    try {
      return cfg.parseNestConfig(fs.readFileSync(layout.config, "utf8"), defaults);
    } catch (e) {
      throw new CliError(`${layout.config}: ${(e as Error).message}`, {
        exitCode: 78,
        hint: "see `apes daemon init --help`",
      });
    }
  };
  let config = load();
  const missing = (["idp", "email", "troop", "troopAudience"] as const).filter((k) => !config[k]);
  if (missing.length > 0)
    throw new CliError(`${layout.config} lacks ${missing.join(", ")}`, {
      exitCode: 78,
      hint: "set them with `sudo apes daemon init --idp ... --troop ... --owner ...`",
    });
  let log = nestLogger(config.logLevel);
  const keyPath = join(ctx.paths.configDir, "id_ed25519");
  await loginIfNeeded(ctx, config.idp!, config.email!, keyPath);
  log.log("info", "logged in", { email: config.email, key_path: keyPath });

  const troopToken = tokens.troopTokens(ctx, config.troopAudience!);
  const delegated = config.delegation ? tokens.delegatedTokens(ctx, config.delegation) : undefined;
  const ca = config.caFile ? fs.readFileSync(config.caFile, "utf8") : undefined;
  const env: Record<string, string> = { PATH: "/usr/local/bin:/usr/bin:/bin" };
  for (const k of ["HOME", "LANG", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"])
    if (ctx.env[k]) env[k] = ctx.env[k]!;
  const statusFile = join(ctx.paths.stateDir, "status.json");
  fs.mkdirSync(ctx.paths.stateDir, { recursive: true, mode: 0o700 });
  const startedAt = Math.floor(Date.now() / 1000);
  const nest: InstanceType<typeof Nest> = new Nest({
    journal: await IntentJournal.open(join(ctx.paths.stateDir, "intents")),
    agentState: new AgentStateFile(join(ctx.paths.stateDir, "agents.json")),
    launcher: elevationLauncher({
      config,
      env,
      agentEnv: ctx.env,
      log: { log: (...a) => log.log(...a) },
      logDir: join(ctx.paths.stateDir, "logs"),
      enroll: async (agent, publicKey) => {
        if (!delegated) throw new Error("no delegation in nest.toml: the owner's `apes delegate` is missing");
        await tokens.enrollAgent(ctx, await delegated(), agent, publicKey);
      },
    }),
    log: { log: (...a) => log.log(...a) },
    version: VERSION,
    policy: config.supervisor,
    link: { troop: config.troop!, token: troopToken, pollMs: config.pollMs, ...(ca ? { ca } : {}) },
    onStatus: (frame) => {
      const tmp = `${statusFile}.tmp`;
      fs.writeFileSync(
        tmp,
        JSON.stringify({
          pid: process.pid,
          started_at: startedAt,
          updated_at: Math.floor(Date.now() / 1000),
          email: config.email,
          troop: config.troop,
          link: nest?.link.state,
          status: frame,
        }),
        { mode: 0o600 },
      );
      fs.renameSync(tmp, statusFile);
    },
  });
  // Not awaited: an intent the previous run left may wait for an approval; signals work meanwhile.
  void nest
    .start()
    .catch((e) =>
      log.log("error", "finishing the previous run's intents failed", { error: (e as Error).message }),
    );
  log.log("info", "nest running", { pid: process.pid, troop: config.troop, version: VERSION });
  return await new Promise<number>((resolve) => {
    let draining = false;
    const drain = (signal: string) => {
      if (draining) return;
      draining = true;
      log.log("info", "draining", { signal });
      void nest.drain().then(
        () => {
          log.log("info", "stopped");
          resolve(0);
        },
        (e) => {
          log.log("error", "drain failed", { error: (e as Error).message });
          resolve(1);
        },
      );
    };
    process.on("SIGTERM", () => drain("SIGTERM"));
    process.on("SIGINT", () => drain("SIGINT"));
    process.on("SIGHUP", () => {
      try {
        config = load();
        log = nestLogger(config.logLevel);
        nest.supervisor.policy = config.supervisor;
        log.log("info", "settings reloaded", { file: layout.config });
      } catch (e) {
        log.log("error", "settings not reloaded: keeping the old ones", { error: (e as Error).message });
      }
    });
  });
}
