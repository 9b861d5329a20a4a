import type { Command } from "commander";
import { verifyAction } from "../../elevation/verify-action.ts";
import type { GetContext } from "../../program.ts";

/**
 * `apes __verify --config-fd N`: the verifier, run by the setuid shim as the unprivileged `_apes`
 * user with a fixed environment; reads one request line on stdin, prints one verdict line on stdout.
 * Hidden from help. The shim's calls take a fast route (cli/elevation/fast.ts, no command tree).
 */
export function register(program: Command, getContext: GetContext): void {
  program
    .command("__verify", { hidden: true })
    .description("internal: verify an elevation grant against the policy (run by the shim)")
    .requiredOption("--config-fd <n>", "the open policy file")
    .action(async (opts: { configFd: string }) => {
      await verifyAction(getContext(), opts.configFd);
    });
}
