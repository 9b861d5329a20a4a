import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import { CliError, usageError } from "../../errors.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import {
  databaseKeyFileOption,
  databaseOption,
  databasePasswordFileOption,
  dataOption,
  openStore,
  type StoreOpts,
} from "./common.ts";

const collect = (v: string, prev: string[]) => [...prev, v];

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("add")
    .description("register an OAuth client (a service that logs humans in through this IdP)")
    .argument("<id>", "the client_id (a-z, 0-9, '.', '_', '-')")
    .option(
      "--redirect-uri <uri>",
      "a redirect URI, matched exactly (repeatable; https, or http to 127.0.0.1/[::1])",
      collect,
      [],
    )
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      `
A redirect URI is accepted at /authorize only when it equals a registered one character for
character. The apes CLI's own client (apes-cli, loopback redirects on any port) is built in
and cannot be registered or changed. Safe while the server runs.

Examples:
  $ apes idp clients add troop --redirect-uri https://troop.example.com/auth/callback
  $ apes idp clients add dev-sp --redirect-uri http://127.0.0.1:3000/callback`,
    )
    .action(async (id: string, opts: { redirectUri: string[]; data?: string } & StoreOpts) => {
      const ctx = getContext();
      const { clientIdProblem, redirectUriRegistrationProblem, MAX_REDIRECT_URIS } = await import(
        "../../../idp/oauth/clients.ts"
      );
      const idProblem = clientIdProblem(id);
      if (idProblem) throw usageError(`invalid client id ${visible(id, { max: 80 })}: ${idProblem}`);
      if (opts.redirectUri.length === 0) throw usageError("give at least one --redirect-uri");
      if (opts.redirectUri.length > MAX_REDIRECT_URIS) {
        throw usageError(`at most ${MAX_REDIRECT_URIS} redirect URIs per client`);
      }
      for (const uri of opts.redirectUri) {
        const problem = redirectUriRegistrationProblem(uri);
        if (problem) throw usageError(`--redirect-uri ${visible(uri, { max: 200 })}: ${problem}`);
      }
      const redirectUris = [...new Set(opts.redirectUri)];
      const store = await openStore(ctx, opts);
      try {
        if (await store.getClient(id)) {
          throw new CliError(`client ${id} exists`, {
            hint: `remove it first: \`apes idp clients remove ${id}\``,
          });
        }
        await store.addClient({ id, redirectUris, createdAt: Math.floor(ctx.clock.now() / 1000) });
        printData(
          ctx,
          { id, redirect_uris: redirectUris },
          () => `registered client ${id}: ${redirectUris.join(" ")}`,
        );
      } finally {
        await store.close();
      }
    });
}
