import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("list your notification subscriptions (--dead: deliveries that failed for good)")
    .option("--dead", "list your dead deliveries instead (the reason each failed)")
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes notify list\n  $ apes notify list --json\n  $ apes notify list --dead",
    )
    .action(async (opts: { dead?: boolean }) => {
      const ctx = getContext();
      const [{ notifyClient }, { printData, formatTable, formatTime }, { visible }] = await Promise.all([
        import("../../../client/notify.ts"),
        import("../../output.ts"),
        import("../../../protocol/display.ts"),
      ]);
      const client = await notifyClient(ctx);
      if (opts.dead) {
        const rows = await client.deliveries("dead");
        printData(ctx, rows, () =>
          rows.length === 0
            ? "no dead deliveries"
            : formatTable([
                ["ID", "SUBSCRIPTION", "EVENT", "GRANT", "ATTEMPTS", "CREATED", "LAST ERROR"],
                ...rows.map((d) => [
                  String(d.id),
                  visible(d.subscription),
                  visible(d.event),
                  visible(d.grant_id ?? "-"),
                  String(d.attempts),
                  formatTime(d.created_at),
                  visible(d.last_error ?? "-", { max: 80 }),
                ]),
              ]),
        );
        return;
      }
      const { channels, data } = await client.list();
      printData(ctx, data, () =>
        [
          data.length === 0
            ? "no subscriptions; add one with `apes notify add webhook URL`"
            : formatTable([
                ["ID", "CHANNEL", "TARGET", "EVENTS", "CREATED"],
                ...data.map((s) => [
                  visible(s.id),
                  visible(s.channel),
                  visible(s.target, { max: 80 }),
                  s.events.map((e) => visible(e)).join(","),
                  formatTime(s.created_at),
                ]),
              ]),
          `channels this IdP offers: ${channels.map((c) => visible(c)).join(", ") || "none"}`,
        ].join("\n"),
      );
    });
}
