import { CommanderError } from "commander";
import { routeArgv } from "./elevation/grammar.ts";
import { buildProgram } from "./program.ts";

/** The argvs the SEA loader (scripts/sea-loader.cjs) answers with the text of `rootHelp`. */
export const ROOT_HELP_ARGVS: readonly (readonly string[])[] = [["--help"], ["-h"], ["help"]];

/**
 * What `apes --help`, `apes -h` and `apes help` print on a stdout that is not a terminal: made at
 * build time by the program itself (scripts/sea-cache.cjs, through cli/main.ts) for the loader,
 * which prints it without reading the program (issue 16), so commander stays the one
 * implementation of the help. Commander wraps to a terminal's width, so the loader takes this text
 * only when stdout is not one. It serves every colour setting (NO_COLOR, FORCE_COLOR, ...) and all
 * three argvs, so every such combination is rendered here and must agree, or the build fails.
 */
export async function rootHelp(): Promise<string> {
  let text: string | undefined;
  for (const argv of ROOT_HELP_ARGVS) {
    for (const hasColors of [false, true]) {
      const out = await render(argv, hasColors);
      if (text === undefined) text = out;
      else if (out !== text)
        throw new Error(`the root help of \`apes ${argv.join(" ")}\` (colour ${hasColors}) differs`);
    }
  }
  if (!text?.startsWith("Usage: apes ")) throw new Error(`unexpected root help: ${JSON.stringify(text)}`);
  return text;
}

/** The normal route (cli/program.ts runCli) with its output captured, for a stdout that is not a terminal. */
async function render(argv: readonly string[], hasColors: boolean): Promise<string> {
  let out = "";
  const io = {
    stdout: {
      write: (s: string) => {
        out += s;
        return true;
      },
    },
    stderr: {
      write: (s: string) => {
        throw new Error(`root help wrote to stderr: ${s}`);
      },
    },
    // Never read by help; created only if something did.
    get stdin() {
      return process.stdin;
    },
  };
  const routed = routeArgv(argv);
  const { program } = await buildProgram({ io }, routed);
  // commander's own values for a stdout that is not a terminal: no width (its type says number; it
  // then wraps at its default), and colour as the environment says (useColor), here both ways.
  program.configureOutput({
    getOutHelpWidth: () => undefined as unknown as number,
    getOutHasColors: () => hasColors,
  });
  try {
    await program.parseAsync(routed, { from: "user" });
  } catch (e) {
    if (!(e instanceof CommanderError && e.exitCode === 0)) throw e;
  }
  return out;
}
