import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerServe } from "./serve.ts";

/** `apes troop ...`: the control plane that pushes intents to nests (docs/control-plane.md). */
export function registerTroopCommands(program: Command, getContext: GetContext): void {
  const troop = program
    .command("troop")
    .description("run the control plane (nests connect to it; owners submit intents)")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes troop serve --idp https://id.example.com --client-id troop.example.com",
    );
  registerServe(troop, getContext);
}
