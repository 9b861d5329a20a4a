/**
 * What both entries of the single executable do around their program: cli/main.ts (the CLI) and
 * cli/elevation/helpers-main.ts (the shim's helpers, a bundle of their own). Imports nothing.
 */

/** `apes grants list | head`: a closed pipe is the reader's choice, not an error worth a stack trace. */
export function exitOnClosedPipe(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
}

/** Sets the exit status from the program's promise (which should never reject). */
export function exitWith(run: Promise<number>): void {
  run.then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(`apes: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
