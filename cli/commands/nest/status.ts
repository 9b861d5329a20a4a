import type { Command } from "commander";
import type { Context } from "../../context.ts";
import type { GetContext } from "../../program.ts";

export function register(parent: Command, getContext: GetContext): void {
  parent
    .command("status")
    .description("a nest's agents and their states, as the nest last reported them")
    .argument("<nest>", "the nest's identity")
    .option("--troop <url>", "the troop (default: $APES_TROOP)")
    .option("--troop-audience <aud>", "the troop's client id (default: its host)")
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes nest status nest-web1+agent@example.com --troop https://troop.example.com\n  $ apes --json nest status nest-web1+agent@example.com | jq '.[].state'",
    )
    .action(async (nest: string, o: { troop?: string; troopAudience?: string }) => {
      await nestStatus(getContext(), nest, o);
    });
}

export async function nestStatus(
  ctx: Context,
  nest: string,
  o: { troop?: string; troopAudience?: string },
): Promise<void> {
  const [{ troopClient }, { printData, formatTable, formatTime }, { visible }] = await Promise.all([
    import("../../troop/client.ts"),
    import("../../output.ts"),
    import("../../../protocol/display.ts"),
  ]);
  const agents = (await troopClient(ctx, o).agents(nest)).data ?? [];
  const s = (v: unknown) => visible(String(v ?? "-"), { max: 80 });
  printData(ctx, agents, () =>
    agents.length === 0
      ? `no agents on ${s(nest)}`
      : formatTable([
          ["AGENT", "STATE", "PID", "RESTARTS", "SINCE"],
          ...agents.map((a) => [
            s(a.name),
            s(a.state),
            s(a.pid),
            s(a.restarts),
            formatTime(a.since as number | undefined),
          ]),
        ]),
  );
}
