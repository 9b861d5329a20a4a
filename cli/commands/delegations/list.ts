import { type Command, Option } from "commander";
import type { Grant } from "../../../protocol/types.ts";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list delegations you gave (delegator) and received (delegate)")
    .addOption(new Option("--role <role>", "only one side").choices(["delegator", "delegate"]))
    .addHelpText(
      "after",
      `
Examples:
  $ apes delegations list
  $ apes delegations list --role delegate --json | jq -r '.[].id'`,
    )
    .action(async (options: { role?: "delegator" | "delegate" }) => {
      await delegationsList(getContext(), options.role);
    });
}

export async function delegationsList(ctx: Context, role?: "delegator" | "delegate"): Promise<void> {
  const [{ delegationsApi }, { delegationTable }, { printData }] = await Promise.all([
    import("../../../client/delegations.ts"),
    import("../../grants/format.ts"),
    import("../../output.ts"),
  ]);
  const api = await delegationsApi(ctx);
  const roles = role ? [role] : (["delegator", "delegate"] as const);
  const seen = new Map<string, Grant>();
  for (const r of roles) for (const d of await api.list(r)) seen.set(d.id, d);
  const all = [...seen.values()].sort((a, b) => b.created_at - a.created_at);
  printData(ctx, all, () => delegationTable(all, api.auth.session().email));
}
