import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerList } from "./list.ts";
import { register as registerLogs } from "./logs.ts";
import { register as registerPause } from "./pause.ts";
import { register as registerRemove } from "./remove.ts";
import { register as registerRestart } from "./restart.ts";
import { register as registerResume } from "./resume.ts";
import { register as registerSpawn } from "./spawn.ts";
import { register as registerStatus } from "./status.ts";
import { register as registerStop } from "./stop.ts";

/** `apes nest ...`: owners and operators command nests through the troop (issue 13). */
export function registerNestCommands(program: Command, getContext: GetContext): void {
  const group = program
    .command("nest")
    .description("command nests through the troop: spawn, stop, restart, pause, resume, remove agents")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ export APES_TROOP=https://troop.example.com\n  $ apes nest list\n  $ apes nest spawn nest-web1+agent@example.com bot1 --approve -- /usr/bin/bot",
    );
  for (const r of [
    registerSpawn,
    registerStop,
    registerRestart,
    registerPause,
    registerResume,
    registerRemove,
    registerList,
    registerStatus,
    registerLogs,
  ])
    r(group, getContext);
}
