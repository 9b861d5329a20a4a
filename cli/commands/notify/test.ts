import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("test")
    .description("send a test notification through one subscription (delivered by the IdP's outbox)")
    .argument("<id>", "the subscription id (`apes notify list`)")
    .addHelpText(
      "after",
      "\nThe IdP queues it and answers at once; `apes notify list --dead` shows it if it fails for good.\n\nExamples:\n  $ apes notify test 0b9c…-uuid",
    )
    .action(async (id: string) => {
      const ctx = getContext();
      const [{ notifyClient }, { checkSubscriptionId }, { printData }] = await Promise.all([
        import("../../../client/notify.ts"),
        import("../../notify/ids.ts"),
        import("../../output.ts"),
      ]);
      checkSubscriptionId(id);
      const client = await notifyClient(ctx);
      const r = await client.test(id);
      printData(
        ctx,
        { subscription: id, key: r.key, queued: true },
        () => `test notification queued (${r.key})`,
      );
    });
}
