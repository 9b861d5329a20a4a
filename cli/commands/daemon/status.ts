import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("status")
    .description("the Nest on this machine: its user, key, identity, session, and whether it runs")
    .addHelpText(
      "after",
      `
Reads the Nest's HOME, so run it as root or as _apes-nest. Exit status 0 when the Nest runs,
69 when it is set up but not running, 78 when it is not set up.

Examples:
  $ sudo apes daemon status
  $ sudo apes --json daemon status | jq .session.key_path_ok`,
    )
    .action(async () => {
      process.exitCode = await daemonStatus(getContext());
    });
}

export async function daemonStatus(ctx: Context): Promise<number> {
  const [host, fs, { join }, cfg, { fingerprint, parsePrivateKey }, { printData, formatTime }, { visible }] =
    await Promise.all([
      import("../../daemon/host.ts"),
      import("node:fs"),
      import("node:path"),
      import("../../../nest/config.ts"),
      import("../../../protocol/keys.ts"),
      import("../../output.ts"),
      import("../../../protocol/display.ts"),
    ]);
  const layout = host.nestLayout();
  const user = host.lookupUser(host.NEST_USER);
  const readJson = (p: string): Record<string, unknown> | undefined => {
    try {
      return JSON.parse(fs.readFileSync(p, "utf8")) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  };
  let keyFp: string | undefined;
  try {
    keyFp = fingerprint(parsePrivateKey(fs.readFileSync(layout.keyPath, "utf8")));
  } catch {
    keyFp = undefined;
  }
  let config: Record<string, unknown> | { error: string } | undefined;
  try {
    const c = cfg.parseNestConfig(fs.readFileSync(layout.config, "utf8"), { shim: "", exec: "" });
    config = {
      idp: c.idp,
      email: c.email,
      troop: c.troop,
      troop_audience: c.troopAudience,
      delegation: c.delegation,
    };
  } catch (e) {
    config = (e as NodeJS.ErrnoException).code === "ENOENT" ? undefined : { error: (e as Error).message };
  }
  const auth = readJson(join(layout.configDir, "auth.json"));
  const keyPathOk =
    typeof auth?.key_path === "string" &&
    fs.existsSync(auth.key_path) &&
    (!auth.key_fingerprint || auth.key_fingerprint === keyFp || auth.key_path !== layout.keyPath);
  const run = readJson(join(layout.stateDir, "status.json"));
  const pid = typeof run?.pid === "number" ? run.pid : undefined;
  let running = false;
  if (pid) {
    try {
      process.kill(pid, 0);
      running = true;
    } catch (e) {
      running = (e as NodeJS.ErrnoException).code === "EPERM";
    }
  }
  const data = {
    user: user ? { name: user.name, uid: user.uid, home: user.home, shell: user.shell } : null,
    home: layout.home,
    key: { path: layout.keyPath, fingerprint: keyFp ?? null },
    config: config ?? null,
    session: auth
      ? {
          email: auth.email,
          idp: auth.idp,
          expires_at: auth.expires_at,
          key_path: auth.key_path,
          key_path_ok: keyPathOk,
        }
      : null,
    running,
    ...(run
      ? {
          pid,
          started_at: run.started_at,
          updated_at: run.updated_at,
          link: run.link,
          agents: (run.status as { agents?: unknown })?.agents ?? [],
        }
      : {}),
  };
  const s = (v: unknown) => visible(String(v ?? "-"), { max: 200 });
  printData(ctx, data, () =>
    [
      `user      ${user ? `${user.name} (uid ${user.uid})` : "missing: run `sudo apes daemon init`"}`,
      `key       ${keyFp ? `${layout.keyPath} (${keyFp})` : "missing"}`,
      `identity  ${s(data.config && "email" in data.config ? data.config.email : undefined)}`,
      `session   ${auth ? `${s(auth.email)} until ${formatTime(auth.expires_at as number)}, key ${s(auth.key_path)}${keyPathOk ? "" : " (STALE: run `sudo apes daemon adopt`)"}` : "none"}`,
      `running   ${running ? `yes (pid ${pid}, link ${s(run?.link)})` : "no"}`,
    ].join("\n"),
  );
  if (!user || !keyFp) return 78;
  return running ? 0 : 69;
}
