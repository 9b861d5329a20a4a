import { userInfo } from "node:os";
import { join } from "node:path";
import type { Command } from "commander";
import { parseDurationMs } from "../../../protocol/duration.ts";
import type { Context } from "../../context.ts";
import { CliError, usageError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import type { GetContext } from "../../program.ts";

/** The user the shim runs its verifier as (VERIFY_USER of native/apes-shim.c). */
export const VERIFIER_USER = "_apes";
/** The socket's name in the cache directory (the shim looks for exactly this). */
export const VERIFIER_SOCKET = "verifier.sock";

/** `apes verifier serve`: verifier/serve.ts on `$(LOCALSTATEDIR)/cache/apes/verifier.sock`, as `_apes`. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("serve")
    .description("serve elevation verdicts to the setuid shim on a root-only socket, as _apes")
    .option("--idle <duration>", "stop after this long without a request", "30m")
    .addHelpText(
      "after",
      `
The shim (\`apes -- CMD\`) then hands each elevation to this process instead of starting a verifier of
its own: the same checks, in the same order, but on a warm runtime with kept-alive TLS connections to
the issuers and their keys in memory (bench/BENCHMARKS.md, Elevation). Without it, or when it does not
answer, every elevation starts a one-shot verifier as before. Runs as the _apes user only (started as
root it becomes _apes first: no groups, _apes's ids, for good); the socket
is ${"$(LOCALSTATEDIR)"}/cache/apes/${VERIFIER_SOCKET}, in _apes's 0700 cache directory. It stops by itself after
--idle, when its socket is removed, or when the executable is replaced (an upgrade); systemd restarts it.

Examples:
  $ sudo systemctl enable --now apes-verifier     # the unit \`make install-verifier-service\` installs
  $ sudo apes verifier serve --idle 2h            # becomes _apes`,
    )
    .action(async (opts: { idle: string }) => {
      await verifierServe(getContext(), opts);
    });
}

export async function verifierServe(ctx: Context, opts: { idle: string }): Promise<void> {
  const idleMs = parseDurationMs(opts.idle);
  if (idleMs === undefined || idleMs < 1000)
    throw usageError(`--idle: not a duration of at least 1s: ${opts.idle}`);
  if (process.getuid?.() === 0) becomeVerifierUser();
  const me = userInfo().username;
  if (me !== VERIFIER_USER)
    throw new CliError(`apes verifier serve runs as ${VERIFIER_USER} only (this is ${me})`, {
      exitCode: ExitCode.NOPERM,
      hint: `sudo -u ${VERIFIER_USER} apes verifier serve   (or: sudo systemctl start apes-verifier)`,
    });
  const { installedPaths } = await import("../../elevation/paths.ts");
  const { ResidentError } = await import("../../../protocol/resident.ts");
  const { serveVerifier } = await import("../../../verifier/serve.ts");
  const { cacheDir } = installedPaths();
  const log = (line: string) => ctx.io.stderr.write(`${line}\n`);
  const stop = new AbortController();
  try {
    const served = serveVerifier({
      socketPath: join(cacheDir, VERIFIER_SOCKET),
      cacheDir,
      idleMs,
      log,
      signal: stop.signal,
    });
    for (const s of ["SIGTERM", "SIGINT"] as const) process.once(s, () => stop.abort(s));
    await served;
  } catch (e) {
    if (e instanceof ResidentError)
      throw new CliError(e.message, {
        exitCode: e.code === "already_running" ? ExitCode.TEMPFAIL : ExitCode.CONFIG,
        ...(e.code === "unsafe_directory"
          ? { hint: "run `sudo make install`: it makes the cache directory _apes's, 0700" }
          : {}),
      });
    throw e;
  }
}

/** Root drops to _apes for good before anything is opened: no groups, its gid, its uid (checked). */
function becomeVerifierUser(): void {
  const { execFileSync } = process.getBuiltinModule("node:child_process");
  let uid: number;
  let gid: number;
  try {
    uid = Number(execFileSync("id", ["-u", VERIFIER_USER], { encoding: "utf8" }).trim());
    gid = Number(execFileSync("id", ["-g", VERIFIER_USER], { encoding: "utf8" }).trim());
  } catch {
    throw new CliError(`there is no ${VERIFIER_USER} user`, {
      exitCode: ExitCode.CONFIG,
      hint: "run `sudo make install`",
    });
  }
  if (!Number.isSafeInteger(uid) || uid <= 0 || !Number.isSafeInteger(gid) || gid <= 0)
    throw new CliError(`${VERIFIER_USER} must be a user other than root`, { exitCode: ExitCode.CONFIG });
  process.setgroups?.([]);
  process.setgid?.(gid);
  process.setuid?.(uid);
  if (process.getuid?.() !== uid || process.geteuid?.() !== uid || process.getgid?.() !== gid)
    throw new CliError(`cannot become ${VERIFIER_USER}`, { exitCode: ExitCode.NOPERM });
}
