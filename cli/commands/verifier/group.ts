import type { Command } from "commander";
import type { GetContext } from "../../program.ts";
import { register as registerServe } from "./serve.ts";

/** `apes verifier ...`: the elevation verifier as a resident service. */
export function registerVerifierCommands(program: Command, getContext: GetContext): void {
  const verifier = program
    .command("verifier")
    .description("run the elevation verifier as a resident service (faster elevations)")
    .helpCommand(false)
    .addHelpText(
      "after",
      "\nExamples:\n  $ sudo apes verifier serve\n  $ sudo systemctl enable --now apes-verifier",
    );
  registerServe(verifier, getContext);
}
