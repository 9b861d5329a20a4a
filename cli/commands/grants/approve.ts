import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { decide } from "../../grants/decide.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("approve")
    .description("approve a pending grant (owners and approvers of the requester)")
    .argument("<id>", "grant id")
    .option("--approval <type>", "once | timed | always (default: what was requested)")
    .option("--duration <d>", "for timed: how long, e.g. 30m (implies --approval timed)")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants list --inbox
  $ apes grants approve 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes grants approve "$id" --approval timed --duration 1h`,
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
  const { approvalAndDuration } = await import("../../grants/format.ts");
  const body = approvalAndDuration(options.approval, options.duration, { timedNeedsDuration: false });
  const json = Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
  return decide(ctx, id, "approved", (c) => c.approve(id, json));
}
