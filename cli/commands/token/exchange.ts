import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("exchange")
    .description(
      "get a token for a service (RFC 8693 token exchange): your own, or acting for a delegator; prints it on stdout",
    )
    .option("--delegation <id>", "act for the delegator of this delegation (`apes delegations list`)")
    .requiredOption("--audience <sp>", "the service the token is for")
    .addHelpText(
      "after",
      `
Without --delegation: your own session token is exchanged for a token at --audience with the
same identity (sub = you, act = human or agent), e.g. for the troop (docs/control-plane.md).
With --delegation: sends your own session token as actor_token; the delegator's token is never needed.
IdPs that only know the older form get grant_type=client_credentials with a client
assertion signed by your key. The token's \`sub\` is the delegator, \`act.sub\` is you.
Only the token goes to stdout (--json: the whole answer).

Examples:
  $ apes token exchange --audience troop.example.com
  $ apes token exchange --delegation "$id" --audience mail.example.com
  $ curl -H "Authorization: Bearer $(apes token exchange --delegation "$id" --audience sp.example)" https://sp.example/api
  $ apes --json token exchange --delegation "$id" --audience sp.example | jq .expires_in`,
    )
    .action(async (options: { delegation?: string; audience: string }) => {
      await tokenExchange(getContext(), options.delegation, options.audience);
    });
}

export async function tokenExchange(
  ctx: Context,
  delegation: string | undefined,
  audience: string,
): Promise<void> {
  const [{ exchangeToken, exchangeOwnToken }, { usageError }] = await Promise.all([
    import("../../../client/delegations.ts"),
    import("../../errors.ts"),
  ]);
  if (!audience.trim()) throw usageError("--audience is empty");
  const r =
    delegation === undefined
      ? await exchangeOwnToken(ctx, audience)
      : await exchangeToken(ctx, delegation, audience);
  if (ctx.globals.json) ctx.io.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else ctx.io.stdout.write(`${r.access_token}\n`);
}
