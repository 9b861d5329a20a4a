import type { Command } from "commander";
import { formatTable, formatTime, printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import {
  databaseKeyFileOption,
  databaseOption,
  databasePasswordFileOption,
  dataOption,
  openStore,
  type StoreOpts,
} from "./common.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list the registered OAuth clients (apes-cli, the CLI's own, is built in)")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText("after", "\nExamples:\n  $ apes idp clients list\n  $ apes --json idp clients list")
    .action(async (opts: { data?: string } & StoreOpts) => {
      const ctx = getContext();
      const store = await openStore(ctx, opts);
      try {
        const clients = await store.listClients();
        printData(
          ctx,
          clients.map((c) => ({ id: c.id, redirect_uris: c.redirectUris, created_at: c.createdAt })),
          () =>
            clients.length === 0
              ? "no registered clients; add one with `apes idp clients add <id> --redirect-uri <uri>`"
              : formatTable([
                  ["ID", "REDIRECT URIS", "CREATED"],
                  ...clients.map((c) => [c.id, c.redirectUris.join(" "), formatTime(c.createdAt)]),
                ]),
        );
      } finally {
        await store.close();
      }
    });
}
