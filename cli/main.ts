import { exitOnClosedPipe, exitWith } from "./entry.ts";
import { VERSION } from "./version.ts";

// Entry point of the single executable. Nothing heavy is imported here: commands load what they
// need when they run, so `apes --version` costs little more than the runtime's own start-up.
const argv = process.argv.slice(2);

exitOnClosedPipe();

/**
 * For the build only (scripts/sea-cache.cjs reads it from the bundle's exports): the text the SEA
 * loader prints for `apes --help` without loading the program, made by this program (cli/help-text.ts).
 */
export const rootHelp = async (): Promise<string> => (await import("./help-text.ts")).rootHelp();

if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) {
  // Answered before the command tree is built (the same line commander prints): scripts and
  // installers call this often, and it need not pay for ~50 command modules.
  process.stdout.write(`apes ${VERSION}\n`);
} else {
  // A dynamic import keeps the program's modules uninitialised (esbuild wraps them) until here.
  exitWith(import("./program.ts").then(({ runCli }) => runCli(argv)));
}
