import type { Context } from "../../context.ts";
import { CliError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import { summary, type TrustDeps, toJson } from "./trust.ts";

/** `apes trust --show [--json]`: the current policy, its path and whether its owner and mode are safe. */
export async function show(ctx: Context, deps: TrustDeps): Promise<void> {
  const { readFile, lstat } = await import("node:fs/promises");
  const { parsePolicy, PolicyError, policyFileProblem } = await import("../../../verifier/policy.ts");
  const file = deps.paths().configFile;
  let text: string;
  let problem: string | undefined;
  try {
    const st = await lstat(file);
    problem = policyFileProblem({ uid: st.uid, mode: st.mode, isFile: st.isFile() });
    text = await readFile(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new CliError(`no elevation policy at ${file}`, {
        exitCode: ExitCode.CONFIG,
        hint: "write one: sudo apes trust --idp URL --approvers a@x --map user=agent@x",
      });
    }
    if (code === "EACCES") {
      throw new CliError(`cannot read ${file}: it is root-only`, {
        exitCode: ExitCode.NOPERM,
        hint: "sudo apes trust --show",
      });
    }
    throw new CliError(`cannot read ${file}: ${(e as Error).message}`, { exitCode: ExitCode.CONFIG });
  }
  let policy: import("../../../verifier/policy.ts").Policy;
  try {
    policy = parsePolicy(text, file, { hostname: deps.hostname() });
  } catch (e) {
    if (e instanceof PolicyError) {
      throw new CliError(e.message, {
        exitCode: ExitCode.CONFIG,
        hint: "rewrite it with `sudo apes trust ...`",
      });
    }
    throw e;
  }
  printData(ctx, { path: file, insecure: problem ?? null, policy: toJson(policy) }, () => {
    const head = `${file}${problem ? ` (INSECURE: ${problem}; the shim refuses it)` : ""}`;
    return `${head}\n${summary(policy)}`;
  });
  if (problem) {
    throw new CliError(`${file} ${problem}`, {
      exitCode: ExitCode.CONFIG,
      hint: "chown root:root and chmod 600 it",
    });
  }
}
