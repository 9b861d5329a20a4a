import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerList } from "./list.ts";
import { register as registerRevoke } from "./revoke.ts";

/** `apes delegations ...`: one command per file. */
export function registerDelegationsCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("delegations")
    .description("delegations you gave or received")
    .helpCommand(false)
    .addHelpText("after", "\nExamples:\n  $ apes delegations list\n  $ apes delegations revoke <id>");
  registerList(group, getContext);
  registerRevoke(group, getContext);
}
