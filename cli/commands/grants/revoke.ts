import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { decide } from "../../grants/decide.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("revoke")
    .description("revoke an approved grant (or cancel your own pending one)")
    .argument("<id>", "grant id")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants revoke 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes --json grants revoke "$id" | jq -r .status`,
    )
    .action(async (id: string) => {
      await grantsRevoke(getContext(), id);
    });
}

export async function grantsRevoke(ctx: Context, id: string) {
  return decide(ctx, id, "revoked", (c) => c.revoke(id));
}
