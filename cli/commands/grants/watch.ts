import type { Command } from "commander";
import type { Grant } from "../../../protocol/types.ts";
import type { GetContext } from "../../program.ts";

interface WatchOptions {
  interactive?: boolean;
  desktop?: boolean;
}

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("watch")
    .description("watch your inbox: print grants as they wait for your decision, and their decisions")
    .option("-i, --interactive", "ask approve / deny / skip for each new grant (needs a terminal)")
    .option("--desktop", "also show a desktop notification per new grant (notify-send, when present)")
    .addHelpText(
      "after",
      `
Prints the grants already waiting, then each new one as it arrives and each decision as it is
made (by you or another approver), one line each, until Ctrl-C (exit 0). Uses push (a long poll
on the grant list) and reconnects when the IdP restarts. With --json: one JSON object per line,
{"event":"pending"|"decided","grant":{...}}. --interactive asks on the terminal for each new
grant: a approves (once), d denies, anything else skips it.

Examples:
  $ apes grants watch
  $ apes grants watch --interactive --desktop
  $ apes --json grants watch | jq -r 'select(.event=="pending") | .grant.id'`,
    )
    .action(async (opts: WatchOptions) => {
      const ctx = getContext();
      const [watch, { notice }, { CliError, usageError }, { shown }] = await Promise.all([
        import("../../grants/watch.ts"),
        import("../../output.ts"),
        import("../../errors.ts"),
        import("../../grants/format.ts"),
      ]);
      const stdin = ctx.io.stdin as NodeJS.ReadStream;
      if (opts.interactive && (ctx.globals.json || !stdin.isTTY))
        throw usageError("--interactive needs a terminal on stdin (and no --json)");
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once("SIGINT", onSignal);
      process.once("SIGTERM", onSignal);
      // Interactive: new grants are asked about one at a time, in the order they arrived.
      const queue: Grant[] = [];
      let wake: (() => void) | undefined;
      const asking = opts.interactive ? ask() : undefined;
      async function ask(): Promise<void> {
        const [{ createInterface }, { grantsClient }, { approveSigned }] = await Promise.all([
          import("node:readline/promises"),
          import("../../../client/grants.ts"),
          import("../../grants/approval-proof.ts"),
        ]);
        const client = await grantsClient(ctx);
        const rl = createInterface({ input: stdin, output: ctx.io.stderr as NodeJS.WritableStream });
        // A terminal's Ctrl-C reaches readline, not the process: it ends the watch the same way.
        rl.on("SIGINT", onSignal);
        try {
          while (!stop.signal.aborted) {
            const g = queue.shift();
            if (!g) {
              await new Promise<void>((r) => {
                wake = r;
                stop.signal.addEventListener("abort", () => r(), { once: true });
              });
              continue;
            }
            const answer = await rl
              .question(`${shown(g.id)}: approve, deny or skip? [a/d/S] `, { signal: stop.signal })
              .catch(() => "");
            if (stop.signal.aborted) break;
            const decision = watch.parseDecision(answer);
            if (!decision) continue;
            try {
              const done =
                decision === "approve" ? await approveSigned(ctx, client, g.id) : await client.deny(g.id);
              notice(ctx, `${done.status} ${shown(g.id)}`);
            } catch (e) {
              notice(ctx, `could not ${decision} ${shown(g.id)}: ${(e as Error).message}`);
            }
          }
        } finally {
          rl.close();
        }
      }
      try {
        if (!ctx.globals.json) notice(ctx, "watching for grants that wait for your decision (Ctrl-C stops)");
        await watch.watchInbox(
          ctx,
          stop.signal,
          (e) => {
            const line = ctx.globals.json ? JSON.stringify(e) : watch.eventLine(e, ctx.clock.now());
            ctx.io.stdout.write(`${line}\n`);
            if (e.event !== "pending") return;
            if (opts.desktop) watch.sendDesktopNotification(e.grant);
            if (opts.interactive) {
              queue.push(e.grant);
              wake?.();
            }
          },
          (text) => notice(ctx, text),
        );
      } catch (e) {
        if (!stop.signal.aborted) throw e instanceof Error ? e : new CliError(String(e));
      } finally {
        stop.abort();
        await asking;
        process.removeListener("SIGINT", onSignal);
        process.removeListener("SIGTERM", onSignal);
      }
    });
}
