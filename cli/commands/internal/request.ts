import type { Command } from "commander";
import { addElevationOptions, rootRawArgs } from "../../elevation/options.ts";
import { requestAction } from "../../elevation/request-action.ts";
import type { GetContext } from "../../program.ts";

/**
 * `apes __request --result-fd N [elevation options] -- CMD...`: run by the setuid shim as the
 * invoking user; writes the AuthZ-JWT to fd N and nowhere else. Hidden from help. The shim's calls
 * take a fast route (cli/elevation/fast.ts, no command tree); this registration serves `--help` and tests.
 */
export function register(program: Command, getContext: GetContext): void {
  const cmd = program
    .command("__request", { hidden: true })
    .description("internal: request, wait for and deliver an elevation grant (run by the shim)")
    .requiredOption("--result-fd <n>", "the inherited pipe the AuthZ-JWT is written to")
    .option("--resident <path>", "afterwards, start the caller's warm requester on this socket");
  addElevationOptions(cmd).action(async (_args: string[], _opts: unknown, self: Command) => {
    await requestAction(getContext(), rootRawArgs(self));
  });
}
