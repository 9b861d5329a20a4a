import type { Command } from "commander";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("watch")
    .description("watch your inbox: print grants as they wait for your decision, and their decisions")
    .addHelpText(
      "after",
      `
Prints the grants already waiting, then each new one as it arrives and each decision as it is
made (by you or another approver), one line each, until Ctrl-C (exit 0). Uses push (a long poll
on the grant list) and reconnects when the IdP restarts. With --json: one JSON object per line,
{"event":"pending"|"decided","grant":{...}}.

Examples:
  $ apes grants watch
  $ apes --json grants watch | jq -r 'select(.event=="pending") | .grant.id'`,
    )
    .action(async () => {
      const ctx = getContext();
      const [{ watchInbox, eventLine }, { notice }, { CliError }] = await Promise.all([
        import("../../grants/watch.ts"),
        import("../../output.ts"),
        import("../../errors.ts"),
      ]);
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once("SIGINT", onSignal);
      process.once("SIGTERM", onSignal);
      try {
        if (!ctx.globals.json) notice(ctx, "watching for grants that wait for your decision (Ctrl-C stops)");
        await watchInbox(
          ctx,
          stop.signal,
          (e) => {
            const line = ctx.globals.json ? JSON.stringify(e) : eventLine(e, ctx.clock.now());
            ctx.io.stdout.write(`${line}\n`);
          },
          (text) => notice(ctx, text),
        );
      } catch (e) {
        if (!stop.signal.aborted) throw e instanceof Error ? e : new CliError(String(e));
      } finally {
        process.removeListener("SIGINT", onSignal);
        process.removeListener("SIGTERM", onSignal);
      }
    });
}
