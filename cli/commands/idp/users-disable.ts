import type { Command } from "commander";
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
    .command("disable")
    .description("disable a user: it can no longer log in, its tokens stop working, its browser sessions end")
    .argument("<email>", "the user")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      "\nTakes effect at once, also while the server runs.\n\nExamples:\n  $ apes idp users disable bot@example.com",
    )
    .action(async (email: string, opts: StoreOpts) => {
      const ctx = getContext();
      const { identityArg } = await import("../../identity.ts");
      const identity = identityArg("the email", email);
      const store = await openStore(ctx, opts);
      try {
        if (!(await store.setDisabled(identity, true, Math.floor(ctx.clock.now() / 1000)))) {
          throw new CliError(`no user ${identity}`, { hint: "`apes idp users list` shows the users" });
        }
        // Its browser sessions end too (a disabled user's session is refused anyway).
        await store.endWebSessionsOf(identity);
        printData(ctx, { email: identity, disabled: true }, () => `disabled ${identity}`);
      } finally {
        await store.close();
      }
    });
}
