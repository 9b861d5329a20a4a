import { Command, CommanderError, Help, Option } from "commander";
import { commandWords, registerCommands, stubTerms } from "./commands/index.ts";
import { type Context, createContext, type GlobalOptions } from "./context.ts";
import { isInternal, runHelper } from "./elevation/fast.ts";
import { routeArgv } from "./elevation/grammar.ts";
import { reportFailure } from "./errors.ts";
import { ExitCode } from "./exit-codes.ts";
import { VERSION } from "./version.ts";

export type GetContext = () => Context;

/**
 * Builds the commander program. `overrides` lets tests inject io/http/clock; the real binary passes
 * none. Commands register themselves in commands/index.ts, one file per command. With `argv`, only the
 * top-level command it runs is loaded (the others are stubs for the help listing); without, all.
 */
export async function buildProgram(
  overrides: Partial<Context> = {},
  argv?: readonly string[],
): Promise<{ program: Command; getContext: GetContext }> {
  const program = new Command("apes");
  let context: Context | undefined;
  const getContext: GetContext = () => {
    if (!context) {
      const o = program.opts<{ json?: boolean; debug?: boolean; color?: boolean }>();
      const env = overrides.env ?? process.env;
      const globals: GlobalOptions = {
        json: Boolean(o.json),
        debug: Boolean(o.debug) || env.APES_DEBUG === "1",
        color: o.color !== false && !env.NO_COLOR,
      };
      context = createContext(globals, overrides);
    }
    return context;
  };
  const io = overrides.io;
  program
    .description("sudo for agents: every privileged action an agent takes is approved by a human first")
    .version(`apes ${VERSION}`, "-V, --version", "print the version")
    .addOption(new Option("--json", "print machine-readable JSON on stdout (read commands)"))
    .addOption(new Option("--debug", "print debug details (discovery, HTTP) on stderr"))
    .addOption(new Option("--no-color", "disable colour in output"))
    .helpCommand(false)
    .showSuggestionAfterError(true)
    // Subcommands are sorted in `propagate` below: commander's sortSubcommands uses localeCompare, whose
    // ICU collator costs ~6 ms on every `apes --help`.
    .configureHelp({
      showGlobalOptions: true,
      // A stub (a command this run did not load) shows the term its real command would.
      subcommandTerm(this: Help, cmd: Command) {
        return stubTerms.get(cmd) ?? Help.prototype.subcommandTerm.call(this, cmd);
      },
    })
    .exitOverride()
    .configureOutput({
      writeOut: (s) => (io?.stdout ?? process.stdout).write(s),
      writeErr: (s) => (io?.stderr ?? process.stderr).write(s),
    });
  program.addHelpText(
    "after",
    `
Examples:
  $ apes login alice@example.com              log in (IdP found through DNS)
  $ apes --reason "deploy hotfix" -- systemctl restart nginx
  $ apes grants list --inbox                  grants waiting for your decision
  $ apes help exit-codes                      what each exit status means

Run \`apes <command> --help\` for a command's options.`,
  );
  const words = argv ? commandWords(argv) : undefined;
  await registerCommands(program, getContext, words ? (name) => words.has(name) : undefined);
  // Every subcommand inherits the error handling and output routing of the root.
  const byName = (a: Command, b: Command) => (a.name() < b.name() ? -1 : a.name() > b.name() ? 1 : 0);
  const propagate = (cmd: Command) => {
    (cmd.commands as Command[]).sort(byName);
    for (const sub of cmd.commands) {
      sub.exitOverride().configureOutput(program.configureOutput()).showSuggestionAfterError(true);
      propagate(sub);
    }
  };
  propagate(program);
  return { program, getContext };
}

/** Runs the program and returns the exit status; never throws. */
export async function runCli(argv: readonly string[], overrides: Partial<Context> = {}): Promise<number> {
  // The shim's helpers (every elevation): no command tree, see elevation/fast.ts. dist/apes runs
  // them from their own small bundle (elevation/helpers-main.ts); this serves `node cli/main.ts` and tests.
  if (isInternal(argv)) return runHelper(argv, overrides);
  // `apes [--reason R ...] -- cmd` is `apes run ...`: routed here, before commander sees it, so a
  // command word after `--` can never be taken for a subcommand.
  const routed = routeArgv(argv);
  const { program, getContext } = await buildProgram(overrides, routed);
  // process.stderr is created on first access (a stream and its modules): only touch it for an error.
  const stderr = overrides.io?.stderr ?? { write: (s: string) => process.stderr.write(s) };
  try {
    await program.parseAsync(routed, { from: "user" });
    return typeof process.exitCode === "number" && !overrides.io ? process.exitCode : ExitCode.OK;
  } catch (e) {
    return reportError(e, stderr, () => getContext().globals.debug);
  }
}

/** Commander's own ends (help, version, usage) here; everything else as the helpers report it. */
function reportError(thrown: unknown, stderr: { write(s: string): unknown }, debug: () => boolean): number {
  if (thrown instanceof CommanderError) {
    // help and --version end through exitOverride with code 0.
    if (thrown.exitCode === 0) return ExitCode.OK;
    if (thrown.code === "commander.unknownCommand" || thrown.code === "commander.unknownOption") {
      stderr.write("  run `apes --help` for the commands and options\n");
    }
    return ExitCode.USAGE;
  }
  return reportFailure(thrown, stderr, debug);
}
