import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { decide } from "../../grants/decide.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("approve")
    .description("approve a pending grant (owners and approvers of the requester), signed with your key")
    .argument("<id>", "grant id")
    .option("--approval <type>", "once | timed | always (default: what was requested)")
    .option("--duration <d>", "for timed: how long, e.g. 30m (implies --approval timed)")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants list --inbox
  $ apes grants approve 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes grants approve "$id" --approval timed --duration 1h

The approval is signed with the key you logged in with, over this grant exactly as the IdP
shows it, the decision and your --approval/--duration (docs/signatures.md). Logged in with a
passkey (no key)? Approve in the browser.`,
    )
    .action(async (id: string, options: { approval?: string; duration?: string }) => {
      await grantsApprove(getContext(), id, options);
    });
}

export async function grantsApprove(
  ctx: Context,
  id: string,
  options: { approval?: string; duration?: string },
) {
  const [{ approvalAndDuration }, proofs] = await Promise.all([
    import("../../grants/format.ts"),
    import("../../grants/approval-proof.ts"),
  ]);
  const body = approvalAndDuration(options.approval, options.duration, { timedNeedsDuration: false });
  return decide(ctx, id, "approved", (c) => proofs.approveSigned(ctx, c, id, body));
}
