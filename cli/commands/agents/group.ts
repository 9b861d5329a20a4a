import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerAdd } from "./add.ts";
import { register as registerDeprovision } from "./deprovision.ts";
import { register as registerList } from "./list.ts";
import { register as registerProvision } from "./provision.ts";
import { register as registerRun } from "./run.ts";

/** `apes agents ...`: one command per file. */
export function registerAgentsCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("agents")
    .description("agents you own (enroll with their public key)")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes agents add --name deploy-bot --key ./bot.pub\n  $ apes agents list --json",
    );
  registerAdd(group, getContext);
  registerList(group, getContext);
  // The machine side of an agent (the Nest runs these through the elevation path).
  registerProvision(group, getContext);
  registerRun(group, getContext);
  registerDeprovision(group, getContext);
}
