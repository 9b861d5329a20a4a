import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("list")
    .description("the nests you may command: connected, last seen, version, agents")
    .option("--troop <url>", "the troop (default: $APES_TROOP)")
    .option("--troop-audience <aud>", "the troop's client id (default: its host)")
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes nest list --troop https://troop.example.com\n  $ apes --json nest list | jq -r '.[].id'",
    )
    .action(async (o: { troop?: string; troopAudience?: string }) => {
      await nestList(getContext(), o);
    });
}

export async function nestList(ctx: Context, o: { troop?: string; troopAudience?: string }): Promise<void> {
  const [{ troopClient }, { printData, formatTable, formatTime }, { visible }] = await Promise.all([
    import("../../troop/client.ts"),
    import("../../output.ts"),
    import("../../../protocol/display.ts"),
  ]);
  const nests = (await troopClient(ctx, o).nests()).data ?? [];
  const s = (v: unknown) => visible(String(v ?? "-"), { max: 80 });
  printData(ctx, nests, () =>
    nests.length === 0
      ? "no nests"
      : formatTable([
          ["NEST", "CONNECTED", "LAST SEEN", "VERSION", "AGENTS"],
          ...nests.map((n) => [
            s(n.id),
            n.connected ? "yes" : "no",
            formatTime(n.last_seen as number | undefined),
            s(n.version),
            String(Array.isArray(n.agents) ? n.agents.length : (n.agents ?? 0)),
          ]),
        ]),
  );
}
