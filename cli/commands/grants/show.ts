import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("show")
    .description("show one grant")
    .argument("<id>", "grant id")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants show 0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
  $ apes grants show "$id" --json | jq .request.command`,
    )
    .action(async (id: string) => {
      await grantsShow(getContext(), id);
    });
}

export async function grantsShow(ctx: Context, id: string): Promise<void> {
  const [{ grantsClient }, { grantDetails }, { printData }] = await Promise.all([
    import("../../../client/grants.ts"),
    import("../../grants/format.ts"),
    import("../../output.ts"),
  ]);
  const grant = await (await grantsClient(ctx)).get(id);
  printData(ctx, grant, () => grantDetails(grant));
}
