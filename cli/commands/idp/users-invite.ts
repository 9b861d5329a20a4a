import type { Command } from "commander";
import { CliError } from "../../errors.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import {
  databaseKeyFileOption,
  databaseOption,
  databasePasswordFileOption,
  dataOption,
  inviteIssuerOption,
  inviteSettings,
  inviteText,
  inviteTtl,
  inviteTtlOption,
  makeInvite,
  openStore,
  type StoreOpts,
} from "./common.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("invite")
    .description("print a one-time link for a human to register a passkey (another one, or to recover)")
    .argument("<email>", "the human")
    .addOption(inviteTtlOption())
    .addOption(inviteIssuerOption())
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      `
The link's secret is in its #fragment, which browsers never send to a server; hand the link to the
person over a channel you trust. It works once, until it expires. Safe while the server runs.

Examples:
  $ apes idp users invite alice@example.com
  $ apes idp users invite alice@example.com --ttl 1h --issuer https://id.example.com
  $ apes --json idp users invite alice@example.com`,
    )
    .action(async (emailArg: string, opts: { ttl?: string; issuer?: string; data?: string } & StoreOpts) => {
      const ctx = getContext();
      const { identityArg } = await import("../../identity.ts");
      const email = identityArg("the email", emailArg);
      const ttl = await inviteTtl(opts);
      const store = await openStore(ctx, opts);
      try {
        const settings = await inviteSettings(ctx, opts, store, ttl);
        const user = await store.getUser(email);
        if (!user)
          throw new CliError(`no user ${email}`, {
            hint: `add it: apes idp users add ${email} --human --invite`,
          });
        if (user.kind !== "human")
          throw new CliError(`${email} is an agent: agents log in with a key, not a passkey`);
        if (user.disabled) throw new CliError(`${email} is disabled`);
        const invite = await makeInvite(ctx, store, email, settings);
        printData(ctx, { email, invite_url: invite.url, invite_expires_at: invite.expiresAt }, () =>
          inviteText(invite),
        );
      } finally {
        await store.close();
      }
    });
}
