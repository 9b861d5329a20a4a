import type { Command } from "commander";
import { visible } from "../../../protocol/display.ts";
import { formatTable, formatTime, printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";
import { dataOption, openStore } from "./common.ts";

/** `apes idp notifications list`: the outbox as the admin sees it (offline, on the data dir). */
export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list notification deliveries, newest first (--dead: the dead-letter queue)")
    .option("--dead", "only deliveries that failed for good")
    .option("--pending", "only deliveries still to be made (or retried)")
    .option("--limit <n>", "at most this many", "50")
    .addOption(dataOption())
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes idp notifications list --dead\n  $ apes --json idp notifications list --limit 10",
    )
    .action(async (opts: { dead?: boolean; pending?: boolean; limit: string; data?: string }) => {
      const ctx = getContext();
      const { usageError } = await import("../../errors.ts");
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
        throw usageError("--limit must be 1..10000");
      if (opts.dead && opts.pending) throw usageError("--dead and --pending exclude each other");
      const status = opts.dead ? "dead" : opts.pending ? "pending" : undefined;
      const store = await openStore(ctx, opts.data);
      try {
        const rows = await store.listNotifications({ limit, ...(status ? { status } : {}) });
        const data = rows.map((n) => ({
          id: n.id,
          key: n.key,
          subscription: n.subscriptionId,
          grant_id: n.grantId ?? null,
          event: n.event,
          status: n.status,
          attempts: n.attempts,
          last_error: n.lastError ?? null,
          created_at: n.createdAt,
          delivered_at: n.deliveredAt ?? null,
        }));
        printData(ctx, data, () =>
          rows.length === 0
            ? `no ${status ?? ""} deliveries`.replace("  ", " ")
            : formatTable([
                ["ID", "STATUS", "EVENT", "GRANT", "ATTEMPTS", "CREATED", "LAST ERROR"],
                ...rows.map((n) => [
                  String(n.id),
                  n.status,
                  n.event,
                  n.grantId ?? "-",
                  String(n.attempts),
                  formatTime(n.createdAt),
                  n.lastError ? visible(n.lastError, { max: 80 }) : "-",
                ]),
              ]),
        );
      } finally {
        await store.close();
      }
    });
}
