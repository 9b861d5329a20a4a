import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { decide } from "../../grants/decide.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("deny")
    .description("deny a pending grant (owners and approvers of the requester)")
    .argument("<id>", "grant id")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants deny 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes --json grants deny "$id" | jq -r .status`,
    )
    .action(async (id: string) => {
      await grantsDeny(getContext(), id);
    });
}

export async function grantsDeny(ctx: Context, id: string) {
  return decide(ctx, id, "denied", (c) => c.deny(id));
}
