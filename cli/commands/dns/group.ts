import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerCheck } from "./check.ts";

/** `apes dns ...`: DNS discovery diagnostics. */
export function registerDnsCommands(program: Command, getContext: GetContext): void {
  const dns = program
    .command("dns")
    .description("DNS discovery (DDISA) diagnostics for admins")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes dns check alice@example.com\n  $ apes --json dns check example.com",
    );
  registerCheck(dns, getContext);
}
