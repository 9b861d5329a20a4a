import type { Command } from "commander";
import { CliError, usageError } from "../../errors.ts";
import type { GetContext } from "../../program.ts";

/**
 * `apes __verify --config-fd N`: the verifier, run by the setuid shim as the unprivileged `_apes`
 * user with a fixed environment; reads one request line on stdin, prints one verdict line on stdout.
 * Hidden from help.
 */
export function register(program: Command, getContext: GetContext): void {
  program
    .command("__verify", { hidden: true })
    .description("internal: verify an elevation grant against the policy (run by the shim)")
    .requiredOption("--config-fd <n>", "the open policy file")
    .action(async (opts: { configFd: string }) => {
      if (!/^\d{1,4}$/.test(opts.configFd)) throw usageError("--config-fd must be a file descriptor number");
      const ctx = getContext();
      const { runVerifier } = await import("../../../helper/verify.ts");
      const home = ctx.env.HOME;
      const { exit, decision } = await runVerifier(ctx.io, {
        configFd: Number(opts.configFd),
        cacheDir: home?.startsWith("/") ? home : undefined,
      });
      // The verdict is on stdout already; the denial's detail goes to the user's stderr.
      if (!decision.ok)
        throw new CliError(`not allowed (${decision.reason}): ${decision.detail}`, { exitCode: exit });
    });
}
