import type { Context } from "../context.ts";
import { CliError, usageError } from "../errors.ts";

/** The action of `apes __verify --config-fd N` (docs/elevation.md section 3): runs verifier/verify.ts. */

/** Parses `__verify --config-fd N` (the only form the shim uses) and returns N as text. */
export function configFdArg(raw: readonly string[]): string {
  if (raw[0] === "__verify" && raw[1] === "--config-fd" && raw.length === 3) return raw[2]!;
  if (raw[0] === "__verify" && raw[1]?.startsWith("--config-fd=") && raw.length === 2)
    return raw[1].slice(12);
  throw usageError("usage: apes __verify --config-fd N");
}

export async function verifyAction(ctx: Context, configFd: string): Promise<void> {
  if (!/^\d{1,4}$/.test(configFd)) throw usageError("--config-fd must be a file descriptor number");
  const { denialMessage, runVerifier } = await import("../../verifier/verify.ts");
  const home = ctx.env.HOME;
  const { exit, decision } = await runVerifier(ctx.io, {
    configFd: Number(configFd),
    cacheDir: home?.startsWith("/") ? home : undefined,
  });
  // The verdict is on stdout already. The denial's detail goes to stderr, which under the shim is a
  // bounded pipe the shim reads and forwards (escaped) to the user: one short line, never the
  // user's own stderr, which the user could leave full to block the verifier.
  if (!decision.ok) throw new CliError(denialMessage(decision), { exitCode: exit });
}
