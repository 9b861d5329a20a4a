import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { CheckResult, DoctorEnv } from "../../doctor/checks.ts";
import { CliError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

/** `apes doctor`: the installation, the policy, the IdP, the clock and the user's session, checked. */
export function register(program: Command, getContext: GetContext): void {
  program
    .command("doctor")
    .description("check what elevation and login depend on: shim, policy, IdP, clock, session, DNS")
    .addHelpText(
      "after",
      `
One line per check: ok, warn or fail, and for each warn or fail the command that fixes it.
Checks the setuid shim and the executable it trusts (owner root, modes), the _apes user, the
policy (root:root 0600, and that it parses: as root only, warns otherwise), each trusted IdP
(discovery and JWKS through the policy's pinned CA, clock skew against its Date header), your
session (auth.json mode, key path and fingerprint, token expiry, your IdP) and the DDISA record of
your domain. Never changes anything.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed.

Examples:
  $ apes doctor
  $ sudo apes doctor
  $ apes doctor --json | jq '.[] | select(.status != "ok")'`,
    )
    .action(async () => {
      const ctx = getContext();
      const { systemDoctorEnv } = await import("../../doctor/env.ts");
      await doctor(ctx, systemDoctorEnv(ctx));
    });
}

export async function doctor(ctx: Context, env: DoctorEnv): Promise<CheckResult[]> {
  const { runDoctor } = await import("../../doctor/checks.ts");
  const results = await runDoctor(env);
  printData(ctx, results, () => render(results));
  const failed = results.filter((r) => r.status === "fail").length;
  if (failed > 0) {
    throw new CliError(`${failed} of ${results.length} checks failed`, {
      exitCode: ExitCode.ERROR,
      hint: "run the fix shown under each failed check, then `apes doctor` again",
    });
  }
  return results;
}

/** The details are already made visible by the checks; names and fixes are our own text. */
function render(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.check.length));
  return results
    .map((r) => {
      const head = `${r.status.padEnd(4)}  ${r.check.padEnd(width)}  ${r.detail}`;
      return r.fix ? `${head}\n      ${" ".repeat(width)}  fix: ${r.fix}` : head;
    })
    .join("\n");
}
