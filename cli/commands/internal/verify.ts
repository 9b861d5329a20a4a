import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import type { Context } from "../../context.ts";
import { CliError, usageError } from "../../errors.ts";
import type { GetContext } from "../../program.ts";

/**
 * `apes __verify --config-fd N`: the verifier, run by the setuid shim as the unprivileged `_apes`
 * user with a fixed environment; reads one request line on stdin, prints one verdict line on stdout.
 * Hidden from help. The shim's calls take a fast route in program.ts (no command tree).
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

/** Parses `__verify --config-fd N` (the only form the shim uses) and returns N as text. */
export function configFdArg(raw: readonly string[]): string {
  if (raw[0] === "__verify" && raw[1] === "--config-fd" && raw.length === 3) return raw[2]!;
  if (raw[0] === "__verify" && raw[1]?.startsWith("--config-fd=") && raw.length === 2)
    return raw[1].slice(12);
  throw usageError("usage: apes __verify --config-fd N");
}

/** Characters of a denial's detail the verifier prints (the shim forwards at most 4 KiB anyway). */
const MAX_DETAIL = 500;

export async function verifyAction(ctx: Context, configFd: string): Promise<void> {
  if (!/^\d{1,4}$/.test(configFd)) throw usageError("--config-fd must be a file descriptor number");
  const { runVerifier } = await import("../../../verifier/verify.ts");
  const home = ctx.env.HOME;
  const { exit, decision } = await runVerifier(ctx.io, {
    configFd: Number(configFd),
    cacheDir: home?.startsWith("/") ? home : undefined,
  });
  // The verdict is on stdout already. The denial's detail goes to stderr, which under the shim is a
  // bounded pipe the shim reads and forwards (escaped) to the user: one short line, never the
  // user's own stderr, which the user could leave full to block the verifier.
  if (!decision.ok)
    throw new CliError(`not allowed (${decision.reason}): ${visible(decision.detail, { max: MAX_DETAIL })}`, {
      exitCode: exit,
    });
}
