import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("deprovision")
    .description("as root: end an agent's processes and remove its Unix user, HOME and spec (idempotent)")
    .argument("<name>", "the agent")
    .addHelpText(
      "after",
      `
The other half of \`apes agents provision\`; the Nest runs it through the elevation path when the
owner removes the agent. Only users that provision made (HOME under $(LOCALSTATEDIR)/lib/apes-agents)
are touched. Every process of the user is killed first. The identity at the IdP stays (the owner
disables it there if it should never log in again).

Examples:
  $ sudo apes agents deprovision bot1`,
    )
    .action(async (name: string) => {
      await agentsDeprovision(getContext(), name);
    });
}

export async function agentsDeprovision(ctx: Context, name: string): Promise<void> {
  const [host, spec, fs, { execFileSync }, { printData }, { CliError }] = await Promise.all([
    import("../../daemon/host.ts"),
    import("../../daemon/agent-spec.ts"),
    import("node:fs"),
    import("node:child_process"),
    import("../../output.ts"),
    import("../../errors.ts"),
  ]);
  host.requireRoot("apes agents deprovision");
  spec.checkAgentName(name);
  const layout = host.nestLayout();
  const home = spec.agentHome(layout, name);
  const user = host.lookupUser(name);
  if (user && user.home !== home)
    throw new CliError(`the user ${name} is not an agent this Nest made (HOME ${user.home})`, {
      exitCode: 77,
    });
  let killed = 0;
  if (user) {
    // Twice: a process may fork while the first round kills.
    for (let round = 0; round < 2; round++) {
      for (const pid of fs.readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
        try {
          const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
          if (Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) !== user.uid) continue;
          process.kill(Number(pid), "SIGKILL");
          killed++;
        } catch {
          // gone meanwhile
        }
      }
    }
    // userdel refuses while a killed process is not yet reaped by its parent: retry for a while.
    for (let attempt = 0; ; attempt++) {
      try {
        execFileSync("/usr/sbin/userdel", [name], { stdio: ["ignore", "ignore", "pipe"] });
        break;
      } catch (e) {
        if (attempt >= 50) throw new CliError(`cannot remove the user ${name}: ${(e as Error).message}`);
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
      }
    }
  }
  fs.rmSync(home, { recursive: true, force: true });
  fs.rmSync(spec.specPath(layout, name), { force: true });
  printData(ctx, { name, removed_user: Boolean(user), killed }, () =>
    user ? `removed agent ${name} (${killed} processes ended)` : `no agent ${name}: nothing to remove`,
  );
}
