import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerAdd } from "./add.ts";
import { register as registerList } from "./list.ts";
import { register as registerRemove } from "./remove.ts";
import { register as registerTest } from "./test.ts";

/** `apes notify ...`: where the IdP tells you about grants waiting for you (and decisions on yours). */
export function registerNotifyCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("notify")
    .description("notifications: be told when a grant waits for your decision, or yours was decided")
    .helpCommand(false)
    .addHelpText(
      "after",
      `
Examples:
  $ apes notify add webhook https://hooks.example.com/apes
  $ apes notify add ntfy my-approvals
  $ apes notify add email
  $ apes notify list --json
  $ apes notify test <id>
  $ apes notify remove <id>`,
    );
  registerAdd(group, getContext);
  registerList(group, getContext);
  registerRemove(group, getContext);
  registerTest(group, getContext);
}
