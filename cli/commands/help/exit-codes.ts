import type { Command } from "commander";
import { usageError } from "../../errors.ts";
import { EXIT_CODE_DESCRIPTIONS, exitCodesHelp } from "../../exit-codes.ts";
import { printData } from "../../output.ts";
import type { GetContext } from "../../program.ts";

/** `apes help [topic|command...]`: help topics (exit-codes) plus help for any command. */
export function register(program: Command, getContext: GetContext): void {
  program
    .command("help")
    .description("show help for a command, or a topic: exit-codes")
    .argument("[topic...]", "a command path (e.g. `grants list`) or `exit-codes`")
    .addHelpText("after", "\nExamples:\n  $ apes help exit-codes\n  $ apes help grants request")
    .action((topic: string[]) => {
      const ctx = getContext();
      if (topic.length === 1 && topic[0] === "exit-codes") {
        printData(
          ctx,
          EXIT_CODE_DESCRIPTIONS.map(([code, name, description]) => ({ code, name, description })),
          exitCodesHelp,
        );
        return;
      }
      let cmd: Command = program;
      for (const name of topic) {
        const next = cmd.commands.find((c) => c.name() === name || c.aliases().includes(name));
        if (!next) throw usageError(`no help topic or command "${topic.join(" ")}"`, "try `apes --help`");
        cmd = next;
      }
      // What `apes <command...> --help` prints (with the text added after it, e.g. examples).
      cmd.outputHelp();
    });
}
