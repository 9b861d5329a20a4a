import type { GrantsClient } from "../../client/grants.ts";
import type { Grant } from "../../protocol/types.ts";
import type { Context } from "../context.ts";

/** Shared body of approve / deny / revoke: call, print the grant (JSON) or one line. */
export async function decide(
  ctx: Context,
  id: string,
  verb: "approved" | "denied" | "revoked",
  call: (client: GrantsClient) => Promise<Grant>,
): Promise<Grant> {
  const [{ grantsClient, checkGrantId }, { printData }, { grantWarning, shown, shownCommand }] =
    await Promise.all([import("../../client/grants.ts"), import("../output.ts"), import("./format.ts")]);
  checkGrantId(id);
  const client = await grantsClient(ctx);
  const grant = await call(client);
  printData(ctx, grant, () => {
    const command = shownCommand(grant);
    const warning = grantWarning(grant);
    const line = `${verb} grant ${shown(grant.id)} of ${shown(grant.request.requester)}${command ? ` (${command})` : ""}`;
    return warning ? `${line}\n${warning}` : line;
  });
  return grant;
}
