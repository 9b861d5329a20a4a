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

/** A shell-like rendering of argv for display (quotes what needs quoting). */
export function shellJoin(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`))
    .join(" ");
}

function what(g: Grant): string {
  const r = g.request;
  if (g.type === "delegation") {
    return `delegate ${r.delegate ?? "?"} at ${r.audience}${r.scopes?.length ? ` [${r.scopes.join(",")}]` : ""}`;
  }
  return r.command ? shellJoin(r.command) : (r.permissions?.join(",") ?? "-");
}

function approvalText(g: Grant): string {
  const r = g.request;
  return r.grant_type === "timed" && r.duration ? `timed ${formatSeconds(r.duration)}` : r.grant_type;
}

export function grantTable(grants: readonly Grant[]): string {
  if (grants.length === 0) return "no grants";
  return formatTable([
    ["ID", "STATUS", "REQUESTER", "HOST", "APPROVAL", "COMMAND"],
    ...grants.map((g) => [
      g.id,
      g.status,
      g.request.requester,
      g.request.target_host,
      approvalText(g),
      what(g),
    ]),
  ]);
}

export function delegationTable(grants: readonly Grant[], me?: string): string {
  if (grants.length === 0) return "no delegations";
  return formatTable([
    ["ID", "STATUS", "DELEGATOR", "DELEGATE", "AUDIENCE", "SCOPES", "APPROVAL", "EXPIRES"],
    ...grants.map((g) => [
      g.id,
      g.status,
      g.request.delegator === me ? `${g.request.delegator ?? "?"} (me)` : (g.request.delegator ?? "?"),
      g.request.delegate === me ? `${g.request.delegate ?? "?"} (me)` : (g.request.delegate ?? "?"),
      g.request.audience,
      g.request.scopes?.join(",") || "-",
      approvalText(g),
      formatTime(g.expires_at),
    ]),
  ]);
}

export function grantDetails(g: Grant): string {
  const r = g.request;
  const rows: [string, string | undefined][] = [
    ["id", g.id],
    ["type", g.type],
    ["status", g.status],
    ["requester", r.requester],
    ["command", r.command ? shellJoin(r.command) : undefined],
    ["cmd_hash", r.cmd_hash],
    ["host", r.target_host],
    ["audience", r.audience],
    ["run as", r.run_as],
    ["approval", approvalText(g)],
    ["reason", r.reason],
    ["delegator", r.delegator],
    ["delegate", r.delegate],
    ["scopes", r.scopes?.join(", ")],
    ["created", formatTime(g.created_at)],
    ["decided by", g.decided_by],
    ["decided", g.decided_at !== undefined ? formatTime(g.decided_at) : undefined],
    ["expires", g.expires_at !== undefined ? formatTime(g.expires_at) : undefined],
    ["used", g.used_at !== undefined ? formatTime(g.used_at) : undefined],
  ];
  const shown = rows.filter((row): row is [string, string] => row[1] !== undefined && row[1] !== "");
  const width = Math.max(...shown.map(([k]) => k.length));
  return shown.map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${v}`).join("\n");
}
