import { commandWarning, shellWord, visible, visibleArgv } from "../../protocol/display.ts";
import type { Grant, GrantType } from "../../protocol/types.ts";
import { GRANT_TYPES } from "../../protocol/types.ts";
import { parseDuration } from "../config.ts";
import { usageError } from "../errors.ts";
import { formatTable, formatTime } from "../output.ts";

/** Shared option parsing and rendering for the grants and delegations commands. */

export function parseApproval(value: string | undefined): GrantType | undefined {
  if (value === undefined) return undefined;
  if (!(GRANT_TYPES as readonly string[]).includes(value)) {
    throw usageError(`--approval must be one of ${GRANT_TYPES.join(", ")} (got "${value}")`);
  }
  return value as GrantType;
}

/** `--duration 30m` -> seconds (>= 1). */
export function parseDurationSeconds(value: string | undefined, option = "--duration"): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(value);
  if (ms === undefined || ms < 1000) {
    throw usageError(
      `${option} must be a duration of at least 1s such as 90s, 30m, 8h or 1h30m (got "${value}")`,
    );
  }
  return Math.floor(ms / 1000);
}

/** Checks approval/duration together: `timed` needs a duration, the others take none. */
export function approvalAndDuration(
  approvalText: string | undefined,
  durationText: string | undefined,
  /** Approving a timed request may keep its requested duration: the IdP checks. */
  options: { timedNeedsDuration?: boolean } = {},
): { grant_type?: GrantType; duration?: number } {
  const grant_type = parseApproval(approvalText);
  const duration = parseDurationSeconds(durationText);
  if (grant_type === "timed" && duration === undefined && options.timedNeedsDuration !== false) {
    throw usageError("--approval timed needs --duration (e.g. --duration 30m)");
  }
  if (duration !== undefined && grant_type !== undefined && grant_type !== "timed") {
    throw usageError(`--duration only applies to --approval timed (got --approval ${grant_type})`);
  }
  if (duration !== undefined && grant_type === undefined) return { grant_type: "timed", duration };
  return { grant_type, duration };
}

export function formatSeconds(s: number): string {
  if (s % 86400 === 0) return `${s / 86400}d`;
  if (s % 3600 === 0) return `${s / 3600}h`;
  if (s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

/** Longest single field shown (an IdP may send anything; the rest is counted, not printed). */
const FIELD_MAX = 1024;

/** A field from the IdP, safe for a terminal; `fallback` when it is missing or not a string. */
export function shown(value: unknown, fallback = "?"): string {
  return typeof value === "string" && value !== "" ? visible(value, { max: FIELD_MAX }) : fallback;
}

/** A list from the IdP (scopes, permissions, approvers): each element its own unambiguous word. */
export function shownList(value: unknown, fallback = "-"): string {
  if (!Array.isArray(value) || value.length === 0) return fallback;
  return value.map((v) => (typeof v === "string" ? shellWord(v) : "?")).join(" ");
}

/** The argv of a grant as received, or undefined when there is none (or it is not a string array). */
function commandOf(g: Grant): string[] | undefined {
  const c: unknown = g.request?.command;
  return Array.isArray(c) && c.length > 0 && c.every((a) => typeof a === "string") ? c : undefined;
}

/** Marks a command in a table whose argv holds characters shown escaped (see commandWarning). */
export const WARNING_MARK = "[!]";

/** The command as exact shell words, or undefined for a grant without one. */
export function shownCommand(g: Grant): string | undefined {
  const argv = commandOf(g);
  if (argv) return visibleArgv(argv);
  return g.request?.command !== undefined ? "? (not a list of strings)" : undefined;
}

/** The warning line for a grant whose command is not what it looks like (undefined otherwise). */
export function grantWarning(g: Grant): string | undefined {
  const argv = commandOf(g);
  return argv ? commandWarning(argv) : undefined;
}

function what(g: Grant): string {
  const r = g.request;
  if (g.type === "delegation") {
    const scopes = Array.isArray(r.scopes) && r.scopes.length > 0 ? ` [${shownList(r.scopes)}]` : "";
    return `delegate ${shown(r.delegate)} at ${shown(r.audience)}${scopes}`;
  }
  const command = shownCommand(g);
  // Labelled: a permission "deploy" must not read as a command `deploy`.
  const permissions = r.permissions !== undefined ? `permissions: ${shownList(r.permissions)}` : undefined;
  if (command === undefined) return permissions ?? "-";
  const shownCmd = grantWarning(g) ? `${WARNING_MARK} ${command}` : command;
  return permissions ? `${shownCmd} (${permissions})` : shownCmd;
}

function approvalText(g: Grant): string {
  const r = g.request;
  return r.grant_type === "timed" && typeof r.duration === "number"
    ? `timed ${formatSeconds(r.duration)}`
    : shown(r.grant_type);
}

export function grantTable(grants: readonly Grant[]): string {
  if (grants.length === 0) return "no grants";
  const table = formatTable([
    ["ID", "STATUS", "REQUESTER", "TARGET", "APPROVAL", "COMMAND / PERMISSIONS"],
    ...grants.map((g) => [
      shown(g.id),
      shown(g.status),
      shown(g.request.requester),
      shown(g.request.target_host),
      approvalText(g),
      what(g),
    ]),
  ]);
  const marked = grants.some((g) => grantWarning(g) !== undefined);
  return marked
    ? `${table}\n${WARNING_MARK} the command contains control, invisible or non-ASCII characters (shown escaped): check it with \`apes grants show <id>\``
    : table;
}

export function delegationTable(grants: readonly Grant[], me?: string): string {
  if (grants.length === 0) return "no delegations";
  const party = (email: string | undefined) =>
    `${shown(email)}${email !== undefined && email === me ? " (me)" : ""}`;
  return formatTable([
    ["ID", "STATUS", "DELEGATOR", "DELEGATE", "AUDIENCE", "SCOPES", "APPROVAL", "EXPIRES"],
    ...grants.map((g) => [
      shown(g.id),
      shown(g.status),
      party(g.request.delegator),
      party(g.request.delegate),
      shown(g.request.audience),
      shownList(g.request.scopes),
      approvalText(g),
      formatTime(g.expires_at),
    ]),
  ]);
}

/** `grants show`: one field a line, every value from the IdP escaped; a warning first when the command needs one. */
export function grantDetails(g: Grant): string {
  const r = g.request;
  const opt = (v: unknown) => (v === undefined ? undefined : shown(v));
  const rows: [string, string | undefined][] = [
    ["id", shown(g.id)],
    ["type", shown(g.type)],
    ["status", shown(g.status)],
    ["requester", shown(r.requester)],
    ["command", shownCommand(g)],
    ["cmd_hash", opt(r.cmd_hash)],
    ["permissions", r.permissions !== undefined ? shownList(r.permissions) : undefined],
    ["target", opt(r.target_host)],
    ["audience", opt(r.audience)],
    ["run as", opt(r.run_as)],
    ["approval", approvalText(g)],
    ["reason", opt(r.reason)],
    ["delegator", opt(r.delegator)],
    ["delegate", opt(r.delegate)],
    ["scopes", r.scopes !== undefined ? shownList(r.scopes) : undefined],
    ["created", formatTime(g.created_at)],
    ["decided by", opt(g.decided_by)],
    ["decided", g.decided_at !== undefined ? formatTime(g.decided_at) : undefined],
    ["expires", g.expires_at !== undefined ? formatTime(g.expires_at) : undefined],
    ["used", g.used_at !== undefined ? formatTime(g.used_at) : undefined],
  ];
  const fields = rows.filter((row): row is [string, string] => row[1] !== undefined && row[1] !== "");
  const width = Math.max(...fields.map(([k]) => k.length));
  const lines = fields.map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${v}`);
  const warning = grantWarning(g);
  return (warning ? [warning, ...lines] : lines).join("\n");
}
