import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("revoke")
    .description("revoke a delegation you gave; tokens exchanged on it stop being issued")
    .argument("<id>", "delegation id")
    .addHelpText(
      "after",
      `
Examples:
  $ apes delegations revoke 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes --json delegations revoke "$id"`,
    )
    .action(async (id: string) => {
      await delegationsRevoke(getContext(), id);
    });
}

export async function delegationsRevoke(ctx: Context, id: string): Promise<void> {
  const [{ delegationsApi }, { printData }] = await Promise.all([
    import("../../../client/delegations.ts"),
    import("../../output.ts"),
  ]);
  const api = await delegationsApi(ctx);
  const d = await api.revoke(id);
  printData(ctx, d ?? { id, status: "revoked" }, () => `revoked delegation ${id}`);
}
