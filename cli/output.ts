import type { Context } from "./context.ts";

/** Data goes to stdout: JSON when --json, otherwise the human rendering. */
export function printData(ctx: Context, value: unknown, human: () => string): void {
  if (ctx.globals.json) ctx.io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else {
    const text = human();
    ctx.io.stdout.write(text.endsWith("\n") || text === "" ? text : `${text}\n`);
  }
}

/** Plain columns for list output; the first row is the header. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return "";
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** Progress and notices go to stderr, never stdout. */
export function notice(ctx: Context, message: string): void {
  ctx.io.stderr.write(`${message}\n`);
}

export function color(ctx: Context, code: "bold" | "dim" | "red" | "green" | "yellow", text: string): string {
  if (!ctx.globals.color || !ctx.io.stderr.isTTY) return text;
  const codes = { bold: [1, 22], dim: [2, 22], red: [31, 39], green: [32, 39], yellow: [33, 39] }[code];
  return `\u001b[${codes[0]}m${text}\u001b[${codes[1]}m`;
}

/** Seconds since the epoch as an ISO-like local-free timestamp. */
export function formatTime(seconds: number | undefined): string {
  // Times come from the IdP: anything that is not a representable instant shows as "?".
  if (seconds === undefined) return "-";
  const date = new Date(typeof seconds === "number" ? seconds * 1000 : Number.NaN);
  if (Number.isNaN(date.getTime())) return "?";
  return date.toISOString().replace(".000Z", "Z");
}
