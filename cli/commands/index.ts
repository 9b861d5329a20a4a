import type { Command } from "commander";
import type { GetContext } from "../program.ts";
import { registerAgentsCommands } from "./agents/group.ts";
import { register as registerAudit } from "./audit/audit.ts";
import { registerDaemonCommands } from "./daemon/group.ts";
import { register as registerDelegate } from "./delegate/delegate.ts";
import { registerDelegationsCommands } from "./delegations/group.ts";
import { register as registerDnsCheck } from "./dns/check.ts";
import { register as registerDoctor } from "./doctor/doctor.ts";
import { registerGrantsCommands } from "./grants/group.ts";
import { register as registerHelp } from "./help/exit-codes.ts";
import { registerIdpCommands } from "./idp/group.ts";
import { register as registerRequest } from "./internal/request.ts";
import { register as registerVerify } from "./internal/verify.ts";
import { register as registerKeygen } from "./keygen/keygen.ts";
import { register as registerLogin } from "./login/login.ts";
import { register as registerLogout } from "./logout/logout.ts";
import { registerNestCommands } from "./nest/group.ts";
import { register as registerRun } from "./run/run.ts";
import { registerTokenCommands } from "./token/group.ts";
import { register as registerTrust } from "./trust/trust.ts";
import { register as registerWhoami } from "./whoami/whoami.ts";

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
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ apes dns check alice@example.com\n  $ apes --json dns check example.com",
    );
  registerDnsCheck(dns, getContext);
  // Sessions, grants, delegations (issue 4).
  registerLogin(program, getContext);
  registerLogout(program, getContext);
  registerWhoami(program, getContext);
  registerKeygen(program, getContext);
  registerAgentsCommands(program, getContext);
  registerGrantsCommands(program, getContext);
  registerDelegate(program, getContext);
  registerDelegationsCommands(program, getContext);
  registerTokenCommands(program, getContext);
  // Elevation: `apes [run] -- cmd`, the policy, and the shim's hidden helpers (issue 5).
  registerRun(program, getContext);
  registerTrust(program, getContext);
  registerRequest(program, getContext);
  registerVerify(program, getContext);
  // The operator's tools (issue 15).
  registerDoctor(program, getContext);
  registerAudit(program, getContext);
  // The Nest (issue 13).
  registerDaemonCommands(program, getContext);
  registerNestCommands(program, getContext);
}
