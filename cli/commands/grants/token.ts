import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("token")
    .description("print the AuthZ-JWT of an approved grant (requester only) on stdout, nothing else")
    .argument("<id>", "grant id")
    .addHelpText(
      "after",
      `
The JWT is the only thing on stdout, so it can be piped; keep it off argv and out of
logs (a \`once\` grant's token is valid for 5 minutes and for one use).

Examples:
  $ apes grants token "$id" > /run/user/$UID/grant.jwt
  $ apes grants token "$id" | my-sp-client --token-stdin
  $ apes --json grants token "$id" | jq .grant.status`,
    )
    .action(async (id: string) => {
      await grantsToken(getContext(), id);
    });
}

export async function grantsToken(ctx: Context, id: string): Promise<void> {
  const { grantsClient } = await import("../../../client/grants.ts");
  const r = await (await grantsClient(ctx)).token(id);
  if (ctx.globals.json) ctx.io.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
  else ctx.io.stdout.write(`${r.authz_jwt}\n`);
}
