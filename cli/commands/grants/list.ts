import { type Command, Option } from "commander";
import { GRANT_STATUSES, type Grant, type GrantStatus } from "../../../protocol/types.ts";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export interface GrantsListOptions {
  status?: GrantStatus;
  inbox?: boolean;
  requester?: string;
  limit: string;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list grants you can see: your own and those of agents you own or approve")
    .addOption(new Option("--status <status>", "only this status").choices(GRANT_STATUSES))
    .option("--inbox", "pending grants of others waiting for your decision")
    .option("--requester <email>", "only grants of this requester")
    .option("--limit <n>", "at most this many (newest first)", "50")
    .addHelpText(
      "after",
      `
Examples:
  $ apes grants list
  $ apes grants list --inbox                      what waits for my approval
  $ apes grants list --status approved --json | jq -r '.[].id'`,
    )
    .action(async (options: GrantsListOptions) => {
      await grantsList(getContext(), options);
    });
}

/** Pure: the inbox is the pending grants of others (the IdP only shows those I may see). */
export function inboxOf(grants: readonly Grant[], me: string): Grant[] {
  const mine = me.toLowerCase();
  return grants.filter((g) => g.status === "pending" && g.request.requester.toLowerCase() !== mine);
}

export async function grantsList(ctx: Context, options: GrantsListOptions): Promise<void> {
  const [{ grantsClient }, { grantTable }, { usageError }, { printData }] = await Promise.all([
    import("../../../client/grants.ts"),
    import("../../grants/format.ts"),
    import("../../errors.ts"),
    import("../../output.ts"),
  ]);
  const limit = Number(options.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
    throw usageError("--limit must be a whole number from 1 to 10000");
  if (options.inbox && options.status && options.status !== "pending") {
    throw usageError("--inbox lists pending grants; drop --status");
  }
  const client = await grantsClient(ctx);
  const status = options.inbox ? "pending" : options.status;
  const grants: Grant[] = [];
  let cursor: string | undefined;
  // Follow the cursor until enough rows; bounded by the limit and a page cap.
  for (let page = 0; page < 100 && grants.length < limit; page++) {
    const res = await client.list({
      status,
      requester: options.requester,
      type: "command",
      limit: Math.min(100, limit - grants.length),
      cursor,
    });
    grants.push(...res.data);
    if (!res.pagination.has_more || !res.pagination.cursor) break;
    cursor = res.pagination.cursor;
  }
  const shown = (options.inbox ? inboxOf(grants, client.session.email) : grants).slice(0, limit);
  printData(ctx, shown, () =>
    shown.length === 0 && options.inbox ? "nothing waits for your decision" : grantTable(shown),
  );
}
