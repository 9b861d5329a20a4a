import { runCli } from "./program.ts";

// Entry point of the single executable. Nothing heavy is imported here: commands load what they
// need when they run, so `apes --version` costs little more than the runtime's own start-up.
runCli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`apes: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
