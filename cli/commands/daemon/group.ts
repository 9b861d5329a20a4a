import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerAdopt } from "./adopt.ts";
import { register as registerInit } from "./init.ts";
import { register as registerInstall } from "./install.ts";
import { register as registerRun } from "./run.ts";
import { register as registerStatus } from "./status.ts";

/** `apes daemon ...`: the Nest on this machine (issue 13). */
export function registerDaemonCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("daemon")
    .description("the Nest: this machine's agent supervisor, itself an ape with its own identity")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ sudo apes daemon init --idp https://id.example.com --troop https://troop.example.com --owner alice@example.com\n  $ sudo apes daemon install\n  $ sudo apes daemon status --json",
    );
  registerInit(group, getContext);
  registerInstall(group, getContext);
  registerAdopt(group, getContext);
  registerStatus(group, getContext);
  registerRun(group, getContext);
}
