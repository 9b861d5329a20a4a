/** Every exit status apes uses, in one place (`apes help exit-codes` prints this table). */
export const ExitCode = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  UNAVAILABLE: 69,
  TEMPFAIL: 75,
  NOPERM: 77,
  CONFIG: 78,
  CANNOT_EXECUTE: 126,
  NOT_FOUND: 127,
  INTERRUPTED: 130,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export const EXIT_CODE_DESCRIPTIONS: ReadonlyArray<[ExitCodeValue, string, string]> = [
  [ExitCode.OK, "ok", "success; with `apes -- cmd`, the command's own status is passed through"],
  [ExitCode.ERROR, "error", "a general error (the message says what happened and what to do)"],
  [ExitCode.USAGE, "usage", "bad command line: unknown command or option, missing or invalid argument"],
  [
    ExitCode.UNAVAILABLE,
    "unavailable",
    "a service (IdP, DNS) could not be reached or answered with a server error",
  ],
  [
    ExitCode.TEMPFAIL,
    "pending",
    "pending or temporary: a grant awaits approval, a wait timed out; try again later",
  ],
  [ExitCode.NOPERM, "not permitted", "denied, revoked, not authorized, or the session could not be renewed"],
  [ExitCode.CONFIG, "config error", "configuration missing or invalid (config.toml, auth.json, policy)"],
  [ExitCode.CANNOT_EXECUTE, "cannot execute", "the approved command was found but could not be executed"],
  [ExitCode.NOT_FOUND, "not found", "the approved command was not found on the secure PATH"],
  [ExitCode.INTERRUPTED, "interrupted", "interrupted (Ctrl-C / SIGINT); a pending grant is cancelled"],
];

export function exitCodesHelp(): string {
  const lines = ["Exit codes used by apes:", ""];
  for (const [code, name, text] of EXIT_CODE_DESCRIPTIONS) {
    lines.push(`  ${String(code).padStart(3)}  ${name.padEnd(14)} ${text}`);
  }
  return `${lines.join("\n")}\n`;
}
