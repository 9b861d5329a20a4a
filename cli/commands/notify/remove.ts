import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("remove")
    .description("remove one of your notification subscriptions (its undelivered notifications go with it)")
    .argument("<id>", "the subscription id (`apes notify list`)")
    .addHelpText("after", "\nExamples:\n  $ apes notify remove 0b9c…-uuid")
    .action(async (id: string) => {
      const ctx = getContext();
      const [{ notifyClient }, { checkSubscriptionId }, { printData }] = await Promise.all([
        import("../../../client/notify.ts"),
        import("../../notify/ids.ts"),
        import("../../output.ts"),
      ]);
      checkSubscriptionId(id);
      const client = await notifyClient(ctx);
      await client.remove(id);
      printData(ctx, { id, removed: true }, () => `removed ${id}`);
    });
}
