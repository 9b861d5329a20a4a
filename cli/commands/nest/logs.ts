import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("logs")
    .description("a nest's intent history: who asked what, for whom, and what the nest answered")
    .argument("<nest>", "the nest's identity")
    .option("--troop <url>", "the troop (default: $APES_TROOP)")
    .option("--troop-audience <aud>", "the troop's client id (default: its host)")
    .option("--limit <n>", "how many, newest first (1-100)", "20")
    .addHelpText(
      "after",
      `
The agents' own output stays on the nest's machine (the Nest's HOME, .local/state/apes/logs/);
the troop holds the intents and their results.

Examples:
  $ apes nest logs nest-web1+agent@example.com --troop https://troop.example.com
  $ apes --json nest logs nest-web1+agent@example.com --limit 100 | jq -r '.[].detail'`,
    )
    .action(async (nest: string, o: { troop?: string; troopAudience?: string; limit: string }) => {
      await nestLogs(getContext(), nest, o);
    });
}

export async function nestLogs(
  ctx: Context,
  nest: string,
  o: { troop?: string; troopAudience?: string; limit: string },
): Promise<void> {
  const [{ troopClient }, { printData, formatTable, formatTime }, { visible }, { usageError }] =
    await Promise.all([
      import("../../troop/client.ts"),
      import("../../output.ts"),
      import("../../../protocol/display.ts"),
      import("../../errors.ts"),
    ]);
  const limit = Number(o.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw usageError("--limit must be 1-100");
  const intents = (await troopClient(ctx, o).intents(nest, limit)).data ?? [];
  const s = (v: unknown, max = 60) => visible(String(v ?? "-"), { max });
  printData(ctx, intents, () =>
    formatTable([
      ["WHEN", "INTENT", "KIND", "AGENT", "BY", "STATE", "DETAIL"],
      ...intents.map((i) => [
        formatTime(i.created_at),
        s(i.id, 40),
        i.kind,
        s(i.agent),
        s(i.submitted_via ? `${i.submitted_via} for ${i.submitted_by}` : i.submitted_by),
        s(i.state),
        s(i.detail, 120),
      ]),
    ]),
  );
}
