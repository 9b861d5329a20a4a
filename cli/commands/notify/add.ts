import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

const MAX_SUBSCRIPTION_FILE = 8 * 1024;

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("add")
    .description("add a notification channel: webhook URL, ntfy topic, email (your own address) or webpush")
    .argument("<channel>", "webhook, ntfy, email or webpush")
    .argument("[target]", "webhook: https URL; ntfy: topic; email: your address (default); webpush: none")
    .option(
      "--events <list>",
      "pending (grants waiting for you), decided (your grants), or both",
      "pending,decided",
    )
    .option("--subscription <file>", "webpush: the browser's PushSubscription JSON ({endpoint, keys})")
    .addHelpText(
      "after",
      `
A webhook's signing secret is printed once: store it where the receiver can verify with it
(docs/notifications.md: headers webhook-id, webhook-timestamp, webhook-signature).

Examples:
  $ apes notify add webhook https://hooks.example.com/apes
  $ apes notify add ntfy my-approvals --events pending
  $ apes notify add email
  $ apes notify add webpush --subscription push.json`,
    )
    .action(
      async (
        channel: string,
        target: string | undefined,
        opts: { events: string; subscription?: string },
      ) => {
        const ctx = getContext();
        const [{ notifyClient }, { usageError }, { printData, notice }, { visible }] = await Promise.all([
          import("../../../client/notify.ts"),
          import("../../errors.ts"),
          import("../../output.ts"),
          import("../../../protocol/display.ts"),
        ]);
        if (!["webhook", "ntfy", "email", "webpush"].includes(channel))
          throw usageError(
            `unknown channel "${visible(channel, { max: 40 })}"`,
            "use webhook, ntfy, email or webpush",
          );
        const events = opts.events.split(",").map((e) => e.trim());
        if (events.length === 0 || !events.every((e) => e === "pending" || e === "decided"))
          throw usageError("--events takes pending, decided or pending,decided");
        let keys: { p256dh: string; auth: string } | undefined;
        if (channel === "webpush") {
          if (!opts.subscription || target)
            throw usageError("webpush takes --subscription FILE and no target");
          const { readFile } = await import("node:fs/promises");
          let sub: { endpoint?: unknown; keys?: { p256dh?: unknown; auth?: unknown } };
          try {
            const text = await readFile(opts.subscription, "utf8");
            if (text.length > MAX_SUBSCRIPTION_FILE) throw new Error("larger than 8 KiB");
            sub = JSON.parse(text);
          } catch (e) {
            throw usageError(`cannot read --subscription ${opts.subscription}: ${(e as Error).message}`);
          }
          if (
            typeof sub.endpoint !== "string" ||
            typeof sub.keys?.p256dh !== "string" ||
            typeof sub.keys?.auth !== "string"
          )
            throw usageError(
              "--subscription must be a PushSubscription JSON: {endpoint, keys: {p256dh, auth}}",
            );
          target = sub.endpoint;
          keys = { p256dh: sub.keys.p256dh, auth: sub.keys.auth };
        } else if (opts.subscription) throw usageError("--subscription is only for webpush");
        else if (!target && channel !== "email") throw usageError(`${channel} needs a target`);
        const client = await notifyClient(ctx);
        const added = await client.add({
          channel: channel as "webhook",
          ...(target ? { target } : {}),
          events,
          ...(keys ? { keys } : {}),
        });
        if (added.secret && !ctx.globals.json)
          notice(ctx, "the webhook secret is shown this once: keep it for the receiver");
        printData(ctx, added, () =>
          [
            `added ${added.channel} ${visible(added.target, { max: 200 })} (${added.events.join(", ")}): ${added.id}`,
            ...(added.secret ? [`secret: ${added.secret}`] : []),
          ].join("\n"),
        );
      },
    );
}
