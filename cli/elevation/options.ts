import { type Command, Option } from "commander";

/**
 * The elevation options as commander options (for help text and value checks); the meaning is
 * taken from the raw argv with the shim's own grammar (grammar.ts), so both agree exactly.
 */
export function addElevationOptions(cmd: Command): Command {
  return (
    cmd
      .addOption(new Option("--reason <text>", "why: shown to the approver and kept in the grant"))
      .addOption(new Option("--as <user>", "run the command as this Unix user (default root)"))
      .addOption(
        new Option("--approval <type>", "once (default), timed or always").choices([
          "once",
          "timed",
          "always",
        ]),
      )
      .addOption(new Option("--duration <d>", "how long a timed grant lasts, e.g. 30m, 1h"))
      .addOption(new Option("--no-wait", "do not wait: print the grant id and exit 75 while it is pending"))
      .addOption(new Option("--grant <id>", "continue an earlier grant (it must match the command)"))
      .addOption(new Option("--timeout <d>", "stop waiting after this long (exit 75), e.g. 90s, 5m"))
      .argument("<command...>", "the command and its arguments, after --")
      // The grammar (parseElevation) gives the precise error, e.g. for a missing `--`.
      .allowUnknownOption()
  );
}

/** The root program's raw argv (what the user typed, after routing). */
export function rootRawArgs(cmd: Command): string[] {
  let root = cmd;
  while (root.parent) root = root.parent;
  return [...(root as Command & { rawArgs: string[] }).rawArgs];
}
