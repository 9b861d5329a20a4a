import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerExchange } from "./exchange.ts";

/** `apes token ...`: one command per file. */
export function registerTokenCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("token")
    .description("tokens for services (token exchange on a delegation)")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes token exchange --delegation <id> --audience mail.example.com",
    );
  registerExchange(group, getContext);
}
