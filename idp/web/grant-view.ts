import { commandWarning, visible, visibleArgv } from "../../protocol/display.ts";
import type { Grant } from "../../protocol/types.ts";
import type { UserRecord } from "../store/types.ts";

/**
 * What the approval pages show of a grant, as plain strings already made visible
 * (protocol/display.ts): every value a requester chose goes through `visible`/`visibleArgv` here,
 * once, and the pages (server-rendered HTML, and the inbox script that sets textContent) only print
 * these strings. Pure.
 */

/** Cut for the one-line command of a list row (the grant page shows all of it). */
const SUMMARY_MAX = 240;

export interface GrantSummary {
  id: string;
  href: string;
  status: Grant["status"];
  requester: string;
  /** "an agent of alice@example.com", "a person", or "" when the requester is unknown. */
  requesterRole: string;
  command: string;
  warning?: string;
  target_host: string;
  run_as: string;
  reason: string;
  grant_type: string;
  created_at: string;
  decided_by?: string;
  decided_at?: string;
}

/** Seconds as the duration grammar writes them (protocol/duration.ts): "90s", "30m", "1h30m", "2d". */
export function durationText(seconds: number): string {
  if (!Number.isSafeInteger(seconds) || seconds <= 0) return `${seconds}s`;
  let rest = seconds;
  let out = "";
  for (const [unit, size] of [
    ["d", 86_400],
    ["h", 3600],
    ["m", 60],
    ["s", 1],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  return out;
}

/** Unix seconds as UTC text a person reads: "2026-12-02 06:31 UTC". */
export function timeText(t: number): string {
  return `${new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

export function grantTypeText(g: Pick<Grant["request"], "grant_type" | "duration">): string {
  if (g.grant_type === "timed") return g.duration ? `timed, ${durationText(g.duration)}` : "timed";
  return g.grant_type;
}

/** The requester's place: an agent and who owns it, or a person. */
export function requesterRole(user: UserRecord | undefined): string {
  if (!user) return "";
  if (user.kind === "agent") return user.owner ? `an agent of ${visible(user.owner)}` : "an agent";
  return "a person";
}

export function commandText(argv: readonly string[] | undefined, max?: number): string {
  if (!argv || argv.length === 0) return "(no command)";
  const shown = visibleArgv(argv);
  return max !== undefined && shown.length > max ? `${shown.slice(0, max)}…` : shown;
}

export function grantSummary(grant: Grant, requester: UserRecord | undefined): GrantSummary {
  const r = grant.request;
  const s: GrantSummary = {
    id: grant.id,
    href: `/grants/${grant.id}`,
    status: grant.status,
    requester: visible(r.requester),
    requesterRole: requesterRole(requester),
    command: commandText(r.command, SUMMARY_MAX),
    target_host: visible(r.target_host),
    run_as: visible(r.run_as ?? "root"),
    reason: r.reason === undefined ? "" : visible(r.reason, { max: 200 }),
    grant_type: grantTypeText(r),
    created_at: timeText(grant.created_at),
  };
  const warning = r.command && commandWarning(r.command);
  if (warning) s.warning = warning;
  if (grant.decided_by !== undefined) s.decided_by = visible(grant.decided_by);
  if (grant.decided_at !== undefined) s.decided_at = timeText(grant.decided_at);
  return s;
}

/**
 * One argument split into runs of plain text and escapes, so a page can mark the escapes: the
 * concatenated `text` of the parts is exactly `visible(arg)`.
 */
export function argumentParts(arg: string): { text: string; escaped: boolean }[] {
  const parts: { text: string; escaped: boolean }[] = [];
  for (const ch of arg) {
    const v = visible(ch);
    const escaped = v !== ch;
    const last = parts[parts.length - 1];
    if (last && last.escaped === escaped) last.text += v;
    else parts.push({ text: v, escaped });
  }
  return parts;
}
