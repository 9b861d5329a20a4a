import { VERSION } from "./version.ts";

// Entry point of the single executable. Nothing heavy is imported here: commands load what they
// need when they run, so `apes --version` costs little more than the runtime's own start-up.
const argv = process.argv.slice(2);

// `apes grants list | head`: a closed pipe is the reader's choice, not an error worth a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw e;
  });
}

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
  import("./program.ts")
    .then(({ runCli }) => runCli(argv))
    .then(
      (code) => {
        process.exitCode = code;
      },
      (e) => {
        process.stderr.write(`apes: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exitCode = 1;
      },
    );
}
