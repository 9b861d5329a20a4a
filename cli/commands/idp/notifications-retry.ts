import type { Command } from "commander";
import { CliError } from "../../errors.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import { dataOption, openStore } from "./common.ts";

/** `apes idp notifications retry`: dead deliveries back into the outbox (the running server picks them up within a second). */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("retry")
    .description("put dead deliveries back in the outbox, attempts reset")
    .argument("[ids...]", "delivery ids (from `apes idp notifications list --dead`)")
    .option("--all-dead", "every dead delivery (at most 10000)")
    .addOption(dataOption())
    .addHelpText(
      "after",
      "\nWorks while the server runs.\n\nExamples:\n  $ apes idp notifications retry 17 18\n  $ apes idp notifications retry --all-dead",
    )
    .action(async (ids: string[], opts: { allDead?: boolean; data?: string }) => {
      const ctx = getContext();
      const { usageError } = await import("../../errors.ts");
      if (opts.allDead === ids.length > 0)
        throw usageError("give delivery ids or --all-dead (one of the two)");
      for (const id of ids) if (!/^[1-9]\d{0,15}$/.test(id)) throw usageError(`"${id}" is not a delivery id`);
      const store = await openStore(ctx, opts.data);
      try {
        const targets = opts.allDead
          ? (await store.listNotifications({ status: "dead", limit: 10_000 })).map((n) => n.id)
          : ids.map(Number);
        const retried: number[] = [];
        const notDead: number[] = [];
        for (const id of targets)
          ((await store.retryNotification(id, Date.now())) ? retried : notDead).push(id);
        printData(ctx, { retried, not_dead: notDead }, () =>
          [
            `${retried.length} delivery(ies) back in the outbox${retried.length ? `: ${retried.join(", ")}` : ""}`,
            ...(notDead.length ? [`not dead (left alone): ${notDead.join(", ")}`] : []),
          ].join("\n"),
        );
        if (notDead.length && !opts.allDead)
          throw new CliError(`${notDead.length} of the ids are not dead deliveries`, {
            hint: "`apes idp notifications list --dead` shows them",
          });
      } finally {
        await store.close();
      }
    });
}
