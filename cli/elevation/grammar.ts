import { shellWord, visibleArgv } from "../../protocol/display.ts";
import { DEFAULT_RUN_AS, isGrantId, isUnixUser } from "../../protocol/names.ts";
import { parseDuration } from "../config.ts";
import { usageError } from "../errors.ts";

/**
 * The elevation grammar, the same one the setuid shim parses in C (docs/elevation.md):
 *
 *   apes [run] [ELEVATION-OPTION...] -- CMD [ARG...]
 *
 * ELEVATION-OPTIONs: --reason R, --as USER, --approval once|timed|always, --duration D, --no-wait,
 * --grant ID, --timeout D, --json, --debug, --no-color; `--opt=value` works too. The `--` is required
 * and CMD must not be empty. Anything else is not an elevation.
 */

export const VALUE_OPTIONS = [
  "--reason",
  "--as",
  "--approval",
  "--duration",
  "--grant",
  "--timeout",
] as const;
export const FLAG_OPTIONS = ["--no-wait", "--json", "--debug", "--no-color"] as const;
/** Options that only make sense for an elevation (the global ones are shared with every command). */
export const ELEVATION_ONLY = [...VALUE_OPTIONS, "--no-wait"] as const;
const GLOBAL_FLAGS = ["--json", "--debug", "--no-color"];

export interface ElevationArgs {
  reason?: string;
  as?: string;
  approval?: string;
  duration?: string;
  grant?: string;
  timeout?: string;
  noWait: boolean;
  json: boolean;
  debug: boolean;
  noColor: boolean;
  /** The option tokens exactly as given (the shim forwards these to `__request`). */
  options: string[];
  command: string[];
}

export type GrammarResult = { ok: true; args: ElevationArgs } | { ok: false; error: string };

/** Parses `[run] [options] -- CMD...`; `allowRun` says whether a leading `run` is accepted. */
/**
 * The global options (--json, --debug, --no-color) among a requester's elevation options, with the
 * environment's say (APES_DEBUG, NO_COLOR); options that do not parse give the defaults (the
 * requester then reports the usage error itself).
 */
export function requesterGlobals(
  options: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): { json: boolean; debug: boolean; color: boolean } {
  const parsed = parseElevation(options, false);
  const flags = parsed.ok ? parsed.args : { json: false, debug: false, noColor: false };
  return {
    json: flags.json,
    debug: flags.debug || env.APES_DEBUG === "1",
    color: !flags.noColor && !env.NO_COLOR,
  };
}

export function parseElevation(argv: readonly string[], allowRun = true): GrammarResult {
  let i = 0;
  if (allowRun && argv[0] === "run") i = 1;
  const args: ElevationArgs = {
    noWait: false,
    json: false,
    debug: false,
    noColor: false,
    options: [],
    command: [],
  };
  const seen = new Set<string>();
  for (; i < argv.length; i++) {
    const tok = argv[i]!;
    if (tok === "--") {
      const command = argv.slice(i + 1);
      if (command.length === 0) return { ok: false, error: "no command after --" };
      args.command = [...command];
      return { ok: true, args };
    }
    const eq = tok.indexOf("=");
    const name = tok.startsWith("--") && eq > 0 ? tok.slice(0, eq) : tok;
    if ((VALUE_OPTIONS as readonly string[]).includes(name)) {
      let value: string;
      if (name !== tok) {
        value = tok.slice(eq + 1);
        args.options.push(tok);
      } else {
        if (i + 1 >= argv.length) return { ok: false, error: `${name} needs a value` };
        value = argv[++i]!;
        args.options.push(tok, value);
      }
      if (seen.has(name)) return { ok: false, error: `${name} given twice` };
      seen.add(name);
      const key = name.slice(2) as "reason" | "as" | "approval" | "duration" | "grant" | "timeout";
      args[key] = value;
      continue;
    }
    if ((FLAG_OPTIONS as readonly string[]).includes(tok)) {
      args.options.push(tok);
      if (tok === "--no-wait") args.noWait = true;
      else if (tok === "--json") args.json = true;
      else if (tok === "--debug") args.debug = true;
      else args.noColor = true;
      continue;
    }
    if (tok.startsWith("-")) return { ok: false, error: `unknown option ${tok} (put -- before the command)` };
    return { ok: false, error: `unexpected "${tok}": put -- before the command (apes -- ${tok} ...)` };
  }
  return { ok: false, error: "missing -- before the command (apes [--reason R] -- cmd args...)" };
}

/**
 * Root-level routing: `apes [globals] --reason R -- cmd` and `apes -- cmd` go to `apes run`; so does
 * anything whose first non-global token is an elevation-only option (so a missing `--` gets the
 * precise grammar error instead of "unknown option"). Everything else is left to commander.
 */
export function routeArgv(argv: readonly string[]): string[] {
  if (parseElevation(argv, false).ok) return ["run", ...argv];
  let i = 0;
  while (i < argv.length && GLOBAL_FLAGS.includes(argv[i]!)) i++;
  const first = argv[i];
  if (first !== undefined) {
    const name = first.includes("=") ? first.slice(0, first.indexOf("=")) : first;
    if (first === "--" || (ELEVATION_ONLY as readonly string[]).includes(name)) return ["run", ...argv];
  }
  return [...argv];
}

export type ApprovalType = "once" | "timed" | "always";

/** The validated meaning of the options. */
export interface ElevationRequest {
  command: string[];
  reason?: string;
  runAs: string;
  approval: ApprovalType;
  /** Seconds, only for timed. */
  durationS?: number;
  grantId?: string;
  timeoutMs?: number;
  noWait: boolean;
}

const MAX_REASON = 1000;

export function validateElevation(
  args: ElevationArgs,
): { ok: true; request: ElevationRequest } | { ok: false; error: string } {
  const approval = args.approval ?? "once";
  if (approval !== "once" && approval !== "timed" && approval !== "always") {
    return { ok: false, error: `--approval must be once, timed or always (got "${approval}")` };
  }
  let durationS: number | undefined;
  if (args.duration !== undefined) {
    if (approval !== "timed") return { ok: false, error: "--duration only goes with --approval timed" };
    const ms = parseDuration(args.duration);
    if (ms === undefined || ms < 1000)
      return { ok: false, error: `--duration "${args.duration}" is not a duration (e.g. 30m, 1h)` };
    durationS = Math.floor(ms / 1000);
  } else if (approval === "timed") {
    return { ok: false, error: "--approval timed needs --duration (e.g. --duration 1h)" };
  }
  let timeoutMs: number | undefined;
  if (args.timeout !== undefined) {
    timeoutMs = parseDuration(args.timeout);
    if (timeoutMs === undefined || timeoutMs <= 0)
      return { ok: false, error: `--timeout "${args.timeout}" is not a duration (e.g. 90s, 5m)` };
  }
  const runAs = args.as ?? DEFAULT_RUN_AS;
  if (!isUnixUser(runAs)) return { ok: false, error: `--as "${runAs}" is not a Unix user name` };
  if (args.grant !== undefined && !isGrantId(args.grant))
    return { ok: false, error: `--grant "${args.grant}" is not a grant id` };
  if (args.reason !== undefined) {
    if (args.reason.trim().length === 0) return { ok: false, error: "--reason must not be empty" };
    if (args.reason.length > MAX_REASON)
      return { ok: false, error: `--reason is longer than ${MAX_REASON} characters` };
  }
  if (!args.command.every((a) => a.isWellFormed()))
    return { ok: false, error: "the command is not valid Unicode" };
  return {
    ok: true,
    request: {
      command: args.command,
      reason: args.reason,
      runAs,
      approval,
      durationS,
      grantId: args.grant,
      timeoutMs,
      noWait: args.noWait,
    },
  };
}

/** `apes --grant <id> -- cmd...` as exact shell words (escapes shown), for "continue later" hints. */
export function continueCommand(
  grantId: string,
  request: Pick<ElevationRequest, "command" | "runAs">,
): string {
  const as = request.runAs !== DEFAULT_RUN_AS ? ` --as ${shellWord(request.runAs)}` : "";
  return `apes --grant ${shellWord(grantId)}${as} -- ${visibleArgv(request.command)}`;
}

/** The raw argv tail after the root program's own tokens, parsed and validated. */
export function elevationFromRaw(raw: readonly string[]): ElevationRequest {
  const parsed = parseElevation(raw, false);
  if (!parsed.ok)
    throw usageError(parsed.error, "usage: apes [--reason R] [--as USER] [options] -- cmd args...");
  const valid = validateElevation(parsed.args);
  if (!valid.ok) throw usageError(valid.error, "see `apes run --help`");
  return valid.request;
}
