import { expect } from "vitest";
import { asCliError, CliError } from "../../cli/errors.ts";
import { ClientError } from "../../client/errors.ts";

/**
 * What the CLI makes of a client/ failure: asserts `e` is a ClientError (client/ throws no CliError)
 * and returns its CliError through cli/errors.ts's one mapping (exit status, hint).
 */
export function asCli(e: unknown): CliError {
  expect(e).toBeInstanceOf(ClientError);
  const c = asCliError(e);
  expect(c).toBeInstanceOf(CliError);
  return c as CliError;
}
