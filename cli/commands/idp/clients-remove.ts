import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import { CliError } from "../../errors.ts";
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

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("remove")
    .description("remove a registered OAuth client: /authorize refuses it from then on")
    .argument("<id>", "the client_id")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      "\nTakes effect at once, also while the server runs.\n\nExamples:\n  $ apes idp clients remove troop",
    )
    .action(async (id: string, opts: { data?: string } & StoreOpts) => {
      const ctx = getContext();
      const store = await openStore(ctx, opts);
      try {
        if (!(await store.removeClient(id))) {
          throw new CliError(`no client ${visible(id, { max: 80 })}`, {
            hint: "`apes idp clients list` shows them",
          });
        }
        printData(ctx, { id, removed: true }, () => `removed client ${id}`);
      } finally {
        await store.close();
      }
    });
}
