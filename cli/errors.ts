import { ExitCode, type ExitCodeValue } from "./exit-codes.ts";

/**
 * An error meant for the user: what happened (message), what to do next (hint), and the exit
 * status. Commands throw it; main prints it once on stderr.
 */
export class CliError extends Error {
  readonly exitCode: ExitCodeValue;
  readonly hint?: string;
  constructor(message: string, options: { exitCode?: ExitCodeValue; hint?: string; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "CliError";
    this.exitCode = options.exitCode ?? ExitCode.ERROR;
    this.hint = options.hint;
  }
}

export const usageError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.USAGE, hint });
export const configError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.CONFIG, hint });
export const unavailableError = (message: string, hint?: string, cause?: unknown) =>
  new CliError(message, { exitCode: ExitCode.UNAVAILABLE, hint, cause });
export const notPermittedError = (message: string, hint?: string) =>
  new CliError(message, { exitCode: ExitCode.NOPERM, hint });
