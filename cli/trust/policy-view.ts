import type { Policy } from "../../verifier/policy.ts";
import type { Context } from "../context.ts";
import type { InstalledPaths } from "../elevation/paths.ts";
import { CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { printData } from "../output.ts";

/** What `apes trust` and `apes trust --show` share: their effects (injected by tests) and how a policy is shown. */

export interface TrustDeps {
  getuid(): number;
  paths(): InstalledPaths;
  hostname(): string;
  nowS(): number;
}

export async function defaultTrustDeps(): Promise<TrustDeps> {
  const [{ installedPaths }, { hostname }] = await Promise.all([
    import("../elevation/paths.ts"),
    import("node:os"),
  ]);
  return {
    getuid: () => process.getuid?.() ?? -1,
    paths: () => installedPaths(),
    hostname: () => hostname(),
    nowS: () => Math.floor(Date.now() / 1000),
  };
}

/** `apes trust --show [--json]`: the current policy, its path and whether its owner and mode are safe. */
export async function show(ctx: Context, deps: TrustDeps): Promise<void> {
  const { readFile, lstat } = await import("node:fs/promises");
  const { parsePolicy, PolicyError, policyFileProblem } = await import("../../verifier/policy.ts");
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
  let policy: Policy;
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

export function toJson(p: Policy): Record<string, unknown> {
  return {
    issuers: p.issuers,
    approvers: p.approvers,
    audiences: p.audiences,
    host: p.host,
    run_as: p.runAs,
    allow_self_approval: p.allowSelfApproval,
    ca: p.caPem ? "inline" : (p.caFile ?? null),
    users: p.users,
  };
}

export function summary(p: Policy): string {
  const lines = [
    `issuers:    ${p.issuers.join(", ")}`,
    `approvers:  ${p.approvers.join(", ")}${p.allowSelfApproval ? " (self-approval allowed)" : ""}`,
    `audiences:  ${p.audiences.join(", ")}`,
    `host:       ${p.host}`,
    `run as:     ${p.runAs.join(", ")}`,
  ];
  if (p.caPem || p.caFile) lines.push(`ca:         ${p.caPem ? "inline PEM" : p.caFile}`);
  for (const [user, ids] of Object.entries(p.users)) lines.push(`user ${user}: ${ids.join(", ")}`);
  return lines.join("\n");
}
