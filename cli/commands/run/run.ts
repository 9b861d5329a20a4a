import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { elevationFromRaw } from "../../elevation/grammar.ts";
import { addElevationOptions, rootRawArgs } from "../../elevation/options.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import type { GetContext } from "../../program.ts";

const GLOBAL_FLAGS = ["--json", "--debug", "--no-color"];

export function register(program: Command, getContext: GetContext): void {
  const cmd = program
    .command("run")
    .description("run a command as root (or --as USER) once a human approves: `apes --reason R -- cmd`");
  addElevationOptions(cmd)
    .addHelpText(
      "after",
      `
\`apes run [options] -- cmd\` and \`apes [options] -- cmd\` are the same. The setuid
shim (/usr/local/bin/apes, \`sudo make install\`) creates a grant bound to the exact
command, waits for an approver, has the grant verified against the root-owned
policy (/etc/apes/config.toml, \`sudo apes trust\`) and runs the command. The
executable on its own cannot elevate (exit 78), except with --no-wait, which
creates the grant and exits 75.

Exit codes: the command's own status; 75 pending or timed out; 77 denied or
revoked; 69 IdP unreachable; 78 not installed / policy problem; 130 interrupted.

Examples:
  $ apes --reason "deploy hotfix" -- systemctl restart nginx
  $ apes --as postgres --reason "vacuum" -- psql -c 'VACUUM'
  $ apes --approval timed --duration 1h --reason "on call" -- journalctl -u nginx
  $ apes --no-wait --reason "tonight" -- apt-get upgrade -y    # prints the grant id
  $ apes --grant 3f2b… -- apt-get upgrade -y                   # continue it later`,
    )
    .action(async (_args: string[], _opts: unknown, self: Command) => {
      await run(getContext(), rootRawArgs(self));
    });
}

/** Without the shim, only --no-wait does something: it creates the grant and ends with exit 75. */
export async function run(ctx: Context, raw: readonly string[]): Promise<number> {
  let i = 0;
  while (i < raw.length && GLOBAL_FLAGS.includes(raw[i]!)) i++;
  if (raw[i] !== "run") throw usageError("unexpected arguments before `run`");
  if (i > 0) throw usageError("put options after `run`", "e.g. apes run --json --reason R -- cmd");
  const req = elevationFromRaw(raw.slice(i + 1));
  if (!req.noWait) {
    throw new CliError("this apes cannot elevate: it is not running as the installed setuid shim", {
      exitCode: ExitCode.CONFIG,
      hint:
        "install it with `sudo make install` (the shim goes to /usr/local/bin/apes) and run `apes -- cmd` from there,\n" +
        "or create the grant now with --no-wait and continue later with --grant",
    });
  }
  const { runRequester } = await import("../../elevation/request.ts");
  return runRequester(ctx, req);
}
