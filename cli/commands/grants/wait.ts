import type { Command } from "commander";
import type { Grant } from "../../../protocol/types.ts";
import type { Context } from "../../context.ts";
import { CliError } from "../../errors.ts";
import { ExitCode } from "../../exit-codes.ts";
import type { GrantsClient } from "../../grants/client.ts";
import { shown, shownCommand } from "../../grants/format.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("wait")
    .description("wait until a grant is decided (exit 0 approved, 77 denied/revoked, 75 timed out)")
    .argument("<id>", "grant id")
    .option("--timeout <d>", "give up after this long, e.g. 90s, 10m (default: wait until decided)")
    .addHelpText(
      "after",
      `
Uses push (a long-poll with \`Prefer: wait\`) when the IdP offers it, otherwise polls every
3 s with If-None-Match (APES_NO_PUSH=1 forces polling). Progress goes to stderr (a
spinner on a terminal); the final grant is printed on stdout with --json.

Examples:
  $ apes grants wait 0b1c2d3e-... --timeout 10m && apes grants token 0b1c2d3e-...
  $ apes --json grants wait "$id" | jq -r .decided_by`,
    )
    .action(async (id: string, options: { timeout?: string }) => {
      const ctx = getContext();
      const [{ parseDurationSeconds }, { grantsClient, checkGrantId }] = await Promise.all([
        import("../../grants/format.ts"),
        import("../../grants/client.ts"),
      ]);
      checkGrantId(id);
      const t = parseDurationSeconds(options.timeout, "--timeout");
      await waitAndReport(ctx, await grantsClient(ctx), id, t !== undefined ? t * 1000 : undefined);
    });
}

/** Waits with a progress line and ends like `apes grants wait`: returns when approved, else throws. */
export async function waitAndReport(
  ctx: Context,
  client: GrantsClient,
  id: string,
  timeoutMs: number | undefined,
  known?: Grant,
  /** Ctrl-C cancels the (own, pending) grant: set by `grants request --wait`, which created it. */
  cancelOnInterrupt = false,
): Promise<Grant> {
  const [{ waitForDecision }, { startProgress }, { printData }] = await Promise.all([
    import("../../grants/wait.ts"),
    import("../../grants/progress.ts"),
    import("../../output.ts"),
  ]);
  const command = known ? shownCommand(known) : undefined;
  const what = command ? `: ${command}` : "";
  // The handler goes in before the waiting line is printed: whoever reacts to that line with Ctrl-C
  // (a person, or a wrapper script) must reach the cancel path, not the default SIGINT death.
  const interrupted = new AbortController();
  const onSigint = () => interrupted.abort(new Error("SIGINT"));
  process.once("SIGINT", onSigint);
  const progress = startProgress(ctx, `waiting for a decision on grant ${id}${what}`);
  let grant: Grant;
  try {
    grant = await waitForDecision(ctx, client, id, { timeoutMs, signal: interrupted.signal });
  } catch (e) {
    progress.stop();
    if (!interrupted.signal.aborted) throw e;
    let what = "the grant is still pending";
    if (cancelOnInterrupt) {
      what = await client.revoke(id).then(
        () => `grant ${id} cancelled`,
        (err: Error) => `could not cancel grant ${id}: ${err.message}`,
      );
    }
    throw new CliError(`interrupted; ${what}`, {
      exitCode: ExitCode.INTERRUPTED,
      hint: cancelOnInterrupt ? undefined : `wait again with \`apes grants wait ${id}\``,
    });
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
  progress.stop(
    `grant ${id} ${shown(grant.status)}${grant.decided_by ? ` by ${shown(grant.decided_by)}` : ""}`,
  );
  printData(ctx, grant, () => shown(grant.status));
  decisionExit(grant);
  return grant;
}

/** approved -> returns; anything else final -> CliError 77 naming the status. */
export function decisionExit(grant: Grant): void {
  if (grant.status === "approved") return;
  throw grantNotUsable(grant);
}

function grantNotUsable(grant: Grant): CliError {
  const by = grant.decided_by ? ` by ${shown(grant.decided_by)}` : "";
  const next =
    grant.status === "pending"
      ? `wait for it: \`apes grants wait ${shown(grant.id)}\``
      : "request a new grant with `apes grants request -- <cmd>`";
  return new CliError(
    `grant ${shown(grant.id)} is ${shown(grant.status)}${grant.status === "pending" ? "" : by}`,
    {
      exitCode: grant.status === "pending" ? ExitCode.TEMPFAIL : ExitCode.NOPERM,
      hint: next,
    },
  );
}
