import type { Command } from "commander";
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

/** `apes idp keys rotate`: new tokens use a new key; the old one stays published until its tokens expire. */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("rotate")
    .description("create a new signing key; the previous key stays in the JWKS until its tokens expire")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText(
      "after",
      "\nWorks while the server runs.\n\nExamples:\n  $ apes idp keys rotate\n  $ apes idp keys rotate --data /srv/idp",
    )
    .action(async (opts: StoreOpts) => {
      const ctx = getContext();
      const store = await openStore(ctx, opts);
      try {
        const { rotateKeys } = await import("../../../idp/keys.ts");
        const rec = await rotateKeys(store, Math.floor(ctx.clock.now() / 1000));
        printData(ctx, { kid: rec.kid, created_at: rec.createdAt }, () => `new signing key ${rec.kid}`);
      } finally {
        await store.close();
      }
    });
}
