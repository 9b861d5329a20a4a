import type { Command } from "commander";
import type { GetContext } from "../program.ts";
import { register as registerDnsCheck } from "./dns/check.ts";
import { register as registerHelp } from "./help/exit-codes.ts";
import { registerIdpCommands } from "./idp/group.ts";

/**
 * The command tree. Each command lives in commands/<noun>/<verb>.ts and exports
 * `register(parent, getContext)`; noun groups are created here.
 */
export function registerCommands(program: Command, getContext: GetContext): void {
  registerHelp(program, getContext);
  registerIdpCommands(program, getContext);
  const dns = program
    .command("dns")
    .description("DNS discovery (DDISA) diagnostics for admins")
    .helpCommand(false);
  registerDnsCheck(dns, getContext);
}
