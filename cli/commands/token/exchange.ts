import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("exchange")
    .description("get a token that acts for a delegator (RFC 8693 token exchange); prints it on stdout")
    .requiredOption("--delegation <id>", "the delegation id (`apes delegations list`)")
    .requiredOption("--audience <sp>", "the service the token is for")
    .addHelpText(
      "after",
      `
Sends your own session token as actor_token; the delegator's token is never needed.
IdPs that only know the older form get grant_type=client_credentials with a client
assertion signed by your key. The token's \`sub\` is the delegator, \`act.sub\` is you.
Only the token goes to stdout (--json: the whole answer).

Examples:
  $ apes token exchange --delegation "$id" --audience mail.example.com
  $ curl -H "Authorization: Bearer $(apes token exchange --delegation "$id" --audience sp.example)" https://sp.example/api
  $ apes --json token exchange --delegation "$id" --audience sp.example | jq .expires_in`,
    )
    .action(async (options: { delegation: string; audience: string }) => {
      await tokenExchange(getContext(), options.delegation, options.audience);
    });
}

export async function tokenExchange(ctx: Context, delegation: string, audience: string): Promise<void> {
  const [{ exchangeToken }, { usageError }] = await Promise.all([
    import("../../../client/delegations.ts"),
    import("../../errors.ts"),
  ]);
  if (!audience.trim()) throw usageError("--audience is empty");
  const r = await exchangeToken(ctx, delegation, audience);
  if (ctx.globals.json) ctx.io.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else ctx.io.stdout.write(`${r.access_token}\n`);
}
