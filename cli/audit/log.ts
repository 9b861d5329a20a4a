import { visible, visibleArgv } from "../../protocol/display.ts";
import { parseDurationMs } from "../../protocol/duration.ts";

/**
 * The shim's audit log as `apes audit` reads it: one JSON object per line (docs/elevation.md,
 * section 5). Readers accept any `decision` and any extra field, since new kinds of lines and
 * reasons are added over time; the table shows every field. Pure: no file access here.
 */

export type AuditEntry = Record<string, unknown>;

export interface AuditFilter {
  user?: string;
  /** Unix seconds: lines from this instant on. */
  sinceS?: number;
  denied?: boolean;
  grant?: string;
}

/** A line longer than this is reported and skipped (the shim's own lines are far shorter). */
export const MAX_AUDIT_LINE = 1024 * 1024;

export function parseAuditLine(text: string): { entry: AuditEntry } | { error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { error: "not JSON" };
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return { error: "not a JSON object" };
  return { entry: value as AuditEntry };
}

/** `--since`: a duration back from now ("15m", "2d") or an ISO 8601 time; undefined when neither. */
export function parseSince(text: string, nowMs: number): number | undefined {
  const ms = parseDurationMs(text);
  if (ms !== undefined) return Math.floor((nowMs - ms) / 1000);
  if (!/^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text.trim())) return undefined;
  const t = Date.parse(text.trim());
  return Number.isNaN(t) ? undefined : Math.floor(t / 1000);
}

export function matchesFilter(e: AuditEntry, f: AuditFilter): boolean {
  if (f.user !== undefined && e.user !== f.user) return false;
  if (f.grant !== undefined && e.grant_id !== f.grant) return false;
  if (f.denied && e.decision !== "deny") return false;
  if (f.sinceS !== undefined && !(typeof e.ts === "number" && e.ts >= f.sinceS)) return false;
  return true;
}

export const AUDIT_HEADER = ["TIME", "DECISION", "REASON", "USER", "RUN AS", "GRANT", "COMMAND", "OTHER"];
const COLUMNS = ["ts", "decision", "reason", "user", "run_as", "grant_id", "argv"];

const show = (value: unknown): string => {
  if (value === undefined || value === null || value === "") return "-";
  return visible(typeof value === "string" ? value : JSON.stringify(value), { max: 500 });
};

function time(ts: unknown): string {
  if (typeof ts !== "number") return show(ts);
  const d = new Date(ts * 1000);
  return Number.isNaN(d.getTime()) ? show(ts) : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** One table row: the main fields in columns, every other field (known or not) as key=value. */
export function auditRow(e: AuditEntry): string[] {
  const argv = Array.isArray(e.argv) && e.argv.every((a) => typeof a === "string") ? e.argv : undefined;
  const other = Object.entries(e)
    .filter(([k]) => !COLUMNS.includes(k))
    .map(([k, val]) => `${visible(k, { max: 100 })}=${show(val)}`)
    .join(" ");
  return [
    time(e.ts),
    show(e.decision),
    show(e.reason),
    show(e.user),
    show(e.run_as),
    show(e.grant_id),
    argv ? visible(visibleArgv(argv), { max: 2000 }) : show(e.argv),
    other,
  ];
}

/**
 * Splits text into lines. A line over MAX_AUDIT_LINE is dropped up to its newline (given back as
 * `undefined`, so line numbers stay right), so one runaway line costs bounded memory.
 */
export class LineSplitter {
  private partial = "";
  private skipping = false;
  push(chunk: string): (string | undefined)[] {
    const lines: (string | undefined)[] = [];
    let rest = chunk;
    for (let nl = rest.indexOf("\n"); nl !== -1; nl = rest.indexOf("\n")) {
      const piece = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      lines.push(
        this.skipping || this.partial.length + piece.length > MAX_AUDIT_LINE
          ? undefined
          : this.partial + piece,
      );
      this.partial = "";
      this.skipping = false;
    }
    if (this.skipping) return lines;
    if (this.partial.length + rest.length > MAX_AUDIT_LINE) {
      this.skipping = true;
      this.partial = "";
    } else this.partial += rest;
    return lines;
  }
  reset(): void {
    this.partial = "";
    this.skipping = false;
  }
}
