import type { GrantsClient } from "../../client/grants.ts";
import { type WaitOptions, waitForDecision } from "../../client/wait.ts";
import { visible } from "../../protocol/display.ts";
import type { Grant } from "../../protocol/types.ts";
import type { Context } from "../context.ts";
import { asCliError, CliError } from "../errors.ts";
import { ExitCode } from "../exit-codes.ts";
import { shown, shownCommand } from "./format.ts";
import { startProgress } from "./progress.ts";

/**
 * Waiting for a person's decision with a progress line, Ctrl-C and a timeout: the one path behind
 * `apes grants wait`, `apes grants request --wait` and the elevation requester. The caller says what
 * the lines read and how to go on; the interrupt and timeout handling is the same for all.
 */

export interface AwaitOptions {
  timeoutMs?: number;
  /**
   * Ends the wait (SIGINT, SIGTERM, a broken stderr; a CliError reason is thrown as it is). Without
   * one, SIGINT does, through a handler installed before the first line is printed: whoever reacts
   * to that line with Ctrl-C must reach the cancel path, not the default SIGINT death.
   */
  signal?: AbortSignal;
  /** The progress line; `elapsedMs` once the wait has gone on for a while. */
  label(elapsedMs?: number): string;
  /** The line that replaces it once the grant is decided. */
  decided(grant: Grant): string;
  /** Interrupted: revoke the grant (this run created it and nobody waits for it any more). */
  cancelOnInterrupt: boolean;
  /** How to go on with a grant still pending (the hint of an interrupt that kept it, and of a timeout). */
  continueHint: string;
  /** The wait itself (injected by tests). */
  wait?: (ctx: Context, client: GrantsClient, id: string, options: WaitOptions) => Promise<Grant>;
}

/** Errors after which the grant needs no more cancelling: the wait has cancelled or kept it as asked. */
const settled = new WeakSet<object>();

/** The wait ended on an interrupt and has already cancelled the grant or kept it, as it was asked. */
export function grantSettledBy(e: unknown): boolean {
  return typeof e === "object" && e !== null && settled.has(e);
}

/** Returns the decided grant (whatever its status); throws on an interrupt (130) or a timeout (75). */
export async function awaitDecision(
  ctx: Context,
  client: GrantsClient,
  id: string,
  options: AwaitOptions,
): Promise<Grant> {
  const own = options.signal ? undefined : new AbortController();
  const signal = options.signal ?? own!.signal;
  const onSigint = () => own?.abort(new Error("SIGINT"));
  if (own) process.once("SIGINT", onSigint);
  const progress = startProgress(ctx, options.label());
  try {
    const grant = await (options.wait ?? waitForDecision)(ctx, client, id, {
      timeoutMs: options.timeoutMs,
      signal,
      onProgress: (ms) => progress.update(options.label(ms)),
    });
    progress.stop(options.decided(grant));
    return grant;
  } catch (e) {
    progress.stop();
    if (signal.aborted) {
      const what = options.cancelOnInterrupt
        ? await cancelGrant(client, id)
        : `grant ${shown(id)} is still pending`;
      const error =
        signal.reason instanceof CliError
          ? signal.reason
          : new CliError(`interrupted; ${what}`, {
              exitCode: ExitCode.INTERRUPTED,
              hint: options.cancelOnInterrupt ? undefined : options.continueHint,
            });
      settled.add(error);
      throw error;
    }
    const err = asCliError(e);
    if (err instanceof CliError && err.exitCode === ExitCode.TEMPFAIL)
      throw new CliError(err.message, { exitCode: ExitCode.TEMPFAIL, hint: options.continueHint });
    throw err;
  } finally {
    if (own) process.removeListener("SIGINT", onSigint);
  }
}

/** Revokes a pending grant nobody waits for any more (best effort); says what happened. */
export async function cancelGrant(client: GrantsClient, id: string): Promise<string> {
  try {
    await client.revoke(id);
    return `grant ${shown(id)} cancelled`;
  } catch (e) {
    return `could not cancel grant ${shown(id)}: ${visible((e as Error).message, { max: 500 })}`;
  }
}

/** approved -> returns; anything else final -> CliError 77 naming the status (75 while pending). */
export function decisionExit(grant: Grant): void {
  if (grant.status === "approved") return;
  const by = grant.decided_by ? ` by ${shown(grant.decided_by)}` : "";
  const pending = grant.status === "pending";
  throw new CliError(`grant ${shown(grant.id)} is ${shown(grant.status)}${pending ? "" : by}`, {
    exitCode: pending ? ExitCode.TEMPFAIL : ExitCode.NOPERM,
    hint: pending
      ? `wait for it: \`apes grants wait ${shown(grant.id)}\``
      : "request a new grant with `apes grants request -- <cmd>`",
  });
}

/**
 * `apes grants wait` and `apes grants request --wait`: waits, prints the decided grant (stdout) and
 * ends like `apes grants wait` (returns when approved, else throws).
 */
export async function waitAndReport(
  ctx: Context,
  client: GrantsClient,
  id: string,
  timeoutMs: number | undefined,
  known?: Grant,
  /** Ctrl-C cancels the (own, pending) grant: set by `grants request --wait`, which created it. */
  cancelOnInterrupt = false,
): Promise<Grant> {
  const { printData } = await import("../output.ts");
  const command = known ? shownCommand(known) : undefined;
  const what = command ? `: ${command}` : "";
  const grant = await awaitDecision(ctx, client, id, {
    timeoutMs,
    label: () => `waiting for a decision on grant ${id}${what}`,
    decided: (g) => `grant ${id} ${shown(g.status)}${g.decided_by ? ` by ${shown(g.decided_by)}` : ""}`,
    cancelOnInterrupt,
    continueHint: `wait again with \`apes grants wait ${id}\`, or ask an approver to look at \`apes grants list --inbox\``,
  });
  printData(ctx, grant, () => shown(grant.status));
  decisionExit(grant);
  return grant;
}
