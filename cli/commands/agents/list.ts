import type { Command } from "commander";
import type { Context } from "../../context.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list the agents you own")
    .addHelpText(
      "after",
      `
Examples:
  $ apes agents list
  $ apes agents list --json | jq -r '.[].email'`,
    )
    .action(async () => {
      await agentsList(getContext());
    });
}

export async function agentsList(ctx: Context): Promise<void> {
  const [{ agentsApi }, { formatTable }, { shown, shownList }] = await Promise.all([
    import("../../../client/agents.ts"),
    import("../../output.ts"),
    import("../../grants/format.ts"),
  ]);
  const agents = await (await agentsApi(ctx)).list();
  printData(ctx, agents, () =>
    agents.length === 0
      ? "no agents (enroll one with `apes agents add --name N --key PUBKEY`)"
      : formatTable([
          ["EMAIL", "NAME", "OWNER", "APPROVERS", "KEY"],
          ...agents.map((a) => [
            `${shown(a.email)}${a.disabled === true ? " (disabled)" : ""}`,
            shown(a.name, "-"),
            shown(a.owner, "-"),
            shownList(a.approvers),
            shown(a.fingerprint, "-"),
          ]),
        ]),
  );
}
