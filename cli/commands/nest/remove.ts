import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { type NestCommandOptions, simpleIntent, troopOptions } from "./common.ts";

export function register(parent: Command, getContext: GetContext): void {
  troopOptions(
    parent
      .command("remove")
      .description("remove an agent on a nest (an intent through the troop; only the agent's owner may)")
      .argument("<nest>", "the nest's identity")
      .argument("<agent>", "the agent's name"),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ apes nest remove nest-web1+agent@example.com bot1 --troop https://troop.example.com
  $ APES_TROOP=https://troop.example.com apes --json nest remove nest-web1+agent@example.com bot1`,
    )
    .action(async (nest: string, agent: string, o: NestCommandOptions) => {
      await simpleIntent(getContext(), "remove", nest, agent, o);
    });
}
