import type { Grant } from "../../protocol/types.ts";
import type { Context } from "../context.ts";
import type { GrantsClient } from "./client.ts";

/** Shared body of approve / deny / revoke: call, print the grant (JSON) or one line. */
export async function decide(
  ctx: Context,
  id: string,
  verb: "approved" | "denied" | "revoked",
  call: (client: GrantsClient) => Promise<Grant>,
): Promise<Grant> {
  const [{ grantsClient, checkGrantId }, { printData }, { shellJoin }] = await Promise.all([
    import("./client.ts"),
    import("../output.ts"),
    import("./format.ts"),
  ]);
  checkGrantId(id);
  const client = await grantsClient(ctx);
  const grant = await call(client);
  const cmd = grant.request.command ? ` (${shellJoin(grant.request.command)})` : "";
  printData(ctx, grant, () => `${verb} grant ${grant.id} of ${grant.request.requester}${cmd}`);
  return grant;
}
