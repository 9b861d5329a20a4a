import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import { canonicalIdentity } from "../../../protocol/names.ts";
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
    .description("list users")
    .addOption(dataOption())
    .addOption(databaseOption())
    .addOption(databasePasswordFileOption())
    .addOption(databaseKeyFileOption())
    .addHelpText("after", "\nExamples:\n  $ apes idp users list\n  $ apes --json idp users list")
    .action(async (opts: StoreOpts) => {
      const ctx = getContext();
      const store = await openStore(ctx, opts);
      try {
        const users = await store.listUsers();
        const passkeys = new Map<string, number>();
        for (const u of users)
          if (u.kind === "human") passkeys.set(u.email, (await store.listPasskeys(u.email)).length);
        const data = users.map((u) => ({
          email: u.email,
          kind: u.kind,
          owner: u.owner ?? null,
          approvers: u.approvers,
          admin: u.admin,
          disabled: u.disabled,
          fingerprint: u.fingerprint ?? null,
          passkeys: passkeys.get(u.email) ?? 0,
          created_at: u.createdAt,
        }));
        printData(ctx, data, () =>
          users.length === 0
            ? "no users; add one with `apes idp users add <email> --human`"
            : formatTable([
                ["EMAIL", "KIND", "OWNER", "ADMIN", "STATUS", "KEY", "PASSKEYS", "CREATED"],
                ...users.map((u) => [
                  // A name stored before identities were normalised and refused now: no login finds it.
                  `${visible(u.email)}${canonicalIdentity(u.email) === u.email ? "" : " (refused name: cannot log in)"}`,
                  u.kind,
                  u.owner === undefined ? "-" : visible(u.owner),
                  u.admin ? "yes" : "no",
                  u.disabled ? "disabled" : "active",
                  u.fingerprint ?? "-",
                  u.kind === "human" ? String(passkeys.get(u.email) ?? 0) : "-",
                  formatTime(u.createdAt),
                ]),
              ]),
        );
      } finally {
        await store.close();
      }
    });
}
