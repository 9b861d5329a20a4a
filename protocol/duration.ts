/**
 * Durations as people write them, one grammar for the CLI, its config and the IdP: a whole number
 * of seconds ("90"), or number-unit pairs with the units ms, s, m, h, d ("30s", "5m", "1h30m", "2d").
 * No spaces inside, no signs or fractions, at most MAX_DURATION_TEXT characters.
 */

export const MAX_DURATION_TEXT = 32;

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds, or undefined when `text` (trimmed) is not a duration. */
export function parseDurationMs(text: string): number | undefined {
  const t = text.trim();
  if (t.length === 0 || t.length > MAX_DURATION_TEXT) return undefined;
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const re = /(\d+)(ms|s|m|h|d)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    end = re.lastIndex;
  }
  return end === t.length && Number.isSafeInteger(total) ? total : undefined;
}

/** Whole seconds from a number of seconds or a duration text; undefined when it is neither. */
export function durationSeconds(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isSafeInteger(value) ? value : undefined;
  if (typeof value !== "string") return undefined;
  const ms = parseDurationMs(value);
  return ms !== undefined && ms % 1000 === 0 ? ms / 1000 : undefined;
}

/** A short elapsed time as people read it: "42s", "3m05s", "2h07m" (progress lines and messages). */
export function formatElapsed(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}
