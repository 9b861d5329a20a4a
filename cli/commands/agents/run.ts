import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("run")
    .description(
      "as the agent's own user: start what `apes agents provision` recorded for it, under the Nest's control",
    )
    .argument("<name>", "the agent")
    .addHelpText(
      "after",
      `
What the Nest starts through the elevation path as the agent's user, with an \`always\` grant the
owner approved once for exactly this command:
  apes --reason "start bot1" --approval always --as bot1 -- apes agents run bot1

It logs the agent in with its own key (its own identity), starts the recorded program in a new
process group, and obeys the Nest on stdin, one word a line: pause (SIGSTOP to the group, answered
once the kernel shows it stopped), resume (SIGCONT), stop (SIGTERM, SIGKILL after 5 s). End of
stdin (the Nest is gone) stops the agent too. An agent provisioned with --env NAME first reads one
line \`env {"NAME":"value"}\` (the Nest sends it from its own environment; the shim's environment
allow-list would drop the values): only the recorded names, else it exits 2 without starting.
Events are JSON lines on stdout; the program's own output goes to stderr. Exits with the program's status.

Examples:
  $ apes agents run bot1`,
    )
    .action(async (name: string) => {
      process.exitCode = await agentsRun(getContext(), name);
    });
}

export async function agentsRun(ctx: Context, name: string): Promise<number> {
  const [
    host,
    spec,
    { spawn },
    { createInterface },
    { join },
    { existsSync },
    { CliError },
    { processStopped },
    { loginIfNeeded },
    agentEnv,
  ] = await Promise.all([
    import("../../daemon/host.ts"),
    import("../../daemon/agent-spec.ts"),
    import("node:child_process"),
    import("node:readline"),
    import("node:path"),
    import("node:fs"),
    import("../../errors.ts"),
    import("../../../nest/agents.ts"),
    import("../../../nest/identity.ts"),
    import("../../daemon/agent-env.ts"),
  ]);
  spec.checkAgentName(name);
  const layout = host.nestLayout();
  const me = host.lookupUser(name);
  if (!me || process.getuid?.() !== me.uid || me.home !== spec.agentHome(layout, name))
    throw new CliError(`apes agents run ${name} runs only as the agent's own user`, { exitCode: 77 });
  const record = spec.readAgentSpec(layout, name);
  if (!record) throw new CliError(`agent ${name} is not provisioned`, { exitCode: 78 });
  const event = (e: Record<string, unknown>) => ctx.io.stdout.write(`${JSON.stringify(e)}\n`);

  if (record.idp)
    await loginIfNeeded(ctx, record.idp, record.email, join(me.home, ".config", "apes", "id_ed25519"));

  const env: Record<string, string> = {
    PATH: "/usr/local/bin:/usr/bin:/bin",
    HOME: me.home,
    USER: name,
    LOGNAME: name,
    APES_AGENT: record.email,
  };
  for (const k of ["LANG", "TERM"]) if (ctx.env[k] !== undefined) env[k] = ctx.env[k]!;
  // The Nest's commands on stdin; with an env allow-list, its first line carries the values (the
  // shim's environment allow-list drops them from ours): see cli/daemon/agent-env.ts.
  const rl = createInterface({ input: ctx.io.stdin });
  const lines: string[] = [];
  let onLine: ((line: string) => void) | undefined;
  let stdinClosed = false;
  let onClose: (() => void) | undefined;
  rl.on("line", (line) => (onLine ? onLine(line) : lines.push(line)));
  rl.on("close", () => {
    stdinClosed = true;
    onClose?.();
  });
  const firstLine = () =>
    new Promise<string | undefined>((resolve) => {
      if (lines.length > 0) return resolve(lines.shift());
      if (stdinClosed) return resolve(undefined);
      const t = setTimeout(() => resolve(undefined), 30_000);
      const done = (l: string | undefined) => {
        clearTimeout(t);
        onLine = undefined;
        onClose = undefined;
        resolve(l);
      };
      onLine = (l) => done(l);
      onClose = () => done(undefined);
    });
  const passable = record.env.filter((n) => agentEnv.passableEnvName(n));
  if (passable.length > 0) {
    const line = await firstLine();
    const parsed =
      line === undefined
        ? { ok: false as const, reason: "no env line on stdin" }
        : agentEnv.parseEnvLine(line, passable);
    if (!parsed.ok) {
      rl.close();
      throw new CliError(`apes agents run ${name}: ${parsed.reason}`, { exitCode: 2 });
    }
    Object.assign(env, parsed.env);
  }
  const secrets = join(me.home, ".config", "apes", "secrets");
  if (record.secrets.length > 0 && existsSync(secrets)) env.APES_SECRETS_DIR = secrets;
  const [file, ...args] = record.argv;
  const child = spawn(file!, args, { detached: true, stdio: ["ignore", 2, 2], env, cwd: me.home });
  const exited = new Promise<number>((resolve) => {
    child.once("exit", (code, signal) => resolve(code ?? 128 + (signal ? signalNumber(signal) : 0)));
    child.once("error", (e) => {
      ctx.io.stderr.write(`apes: cannot start ${file}: ${e.message}\n`);
      resolve(127);
    });
  });
  await new Promise<void>((r) => {
    child.once("spawn", () => r());
    child.once("error", () => r());
  });
  if (child.pid) event({ event: "started", pid: child.pid });
  const group = (sig: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, sig);
    } catch {
      // already gone
    }
  };
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    group("SIGTERM");
    group("SIGCONT");
    const t = setTimeout(() => group("SIGKILL"), 5000);
    await exited;
    clearTimeout(t);
  };
  const waitState = async (stopped: boolean) => {
    for (let i = 0; i < 100; i++) {
      if ((await processStopped(child.pid!)) === stopped) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  };
  const control = (line: string) => {
    void (async () => {
      const word = line.trim();
      if (word === "pause") {
        group("SIGSTOP");
        event({ event: (await waitState(true)) ? "paused" : "pause-failed" });
      } else if (word === "resume") {
        group("SIGCONT");
        event({ event: (await waitState(false)) ? "resumed" : "resume-failed" });
      } else if (word === "stop") await stop();
    })();
  };
  for (const l of lines.splice(0)) control(l);
  onLine = control;
  onClose = () => void stop();
  if (stdinClosed) void stop();
  for (const s of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(s, () => void stop());
  const code = await exited;
  event({ event: "exited", code });
  rl.close();
  return code;
}

function signalNumber(signal: NodeJS.Signals): number {
  const n = (process.getBuiltinModule("node:os").constants.signals as Record<string, number>)[signal];
  return n ?? 0;
}
