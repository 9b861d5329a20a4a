import { appendFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  auditRow,
  LineSplitter,
  MAX_AUDIT_LINE,
  matchesFilter,
  parseAuditLine,
  parseSince,
} from "../../cli/audit/log.ts";
import { audit } from "../../cli/commands/audit/audit.ts";
import { pathsFrom } from "../../cli/elevation/paths.ts";
import { CliError } from "../../cli/errors.ts";
import { fakeContext } from "../helpers/fake-context.ts";

const NOW_MS = Date.UTC(2026, 11, 1, 12, 0, 0);
const T = NOW_MS / 1000;
const line = (o: Record<string, unknown>) => JSON.stringify(o);
const LINES = [
  line({
    ts: T - 7200,
    decision: "allow",
    reason: "",
    user: "deploy",
    run_as: "root",
    argv: ["id"],
    grant_id: "g1",
  }),
  line({
    ts: T - 600,
    decision: "deny",
    reason: "grant_denied",
    user: "deploy",
    argv: ["rm", "-rf", "/"],
    grant_id: "g2",
  }),
  line({ ts: T - 60, decision: "attempt", user: "ci", argv: ["ls"], phase: "requester", novel: { a: 1 } }),
  line({ ts: T - 30, decision: "deny", reason: "config_missing", user: "ci", argv: ["ls"], grant_id: "" }),
];

describe("audit lines", () => {
  it("parses objects only", () => {
    expect(parseAuditLine('{"a":1}')).toEqual({ entry: { a: 1 } });
    expect(parseAuditLine("[1]")).toEqual({ error: "not a JSON object" });
    expect(parseAuditLine("{oops")).toEqual({ error: "not JSON" });
  });

  it("--since: durations back from now, ISO times, nothing else", () => {
    expect(parseSince("15m", NOW_MS)).toBe(T - 900);
    expect(parseSince("2026-12-01T11:00:00Z", NOW_MS)).toBe(T - 3600);
    expect(parseSince("2026-12-01", NOW_MS)).toBe(Date.UTC(2026, 11, 1) / 1000);
    expect(parseSince("yesterday", NOW_MS)).toBeUndefined();
    expect(parseSince("-5m", NOW_MS)).toBeUndefined();
  });

  it("the filter matrix", () => {
    const entries = LINES.map((l) => (parseAuditLine(l) as { entry: Record<string, unknown> }).entry);
    const pick = (f: Parameters<typeof matchesFilter>[1]) =>
      entries.flatMap((e, i) => (matchesFilter(e, f) ? [i] : []));
    expect(pick({})).toEqual([0, 1, 2, 3]);
    expect(pick({ user: "deploy" })).toEqual([0, 1]);
    expect(pick({ denied: true })).toEqual([1, 3]);
    expect(pick({ grant: "g2" })).toEqual([1]);
    expect(pick({ sinceS: T - 900 })).toEqual([1, 2, 3]);
    expect(pick({ user: "ci", denied: true, sinceS: T - 900 })).toEqual([3]);
    expect(pick({ user: "nobody" })).toEqual([]);
    // A line without a numeric ts never matches a time filter.
    expect(matchesFilter({ ts: "soon" }, { sinceS: 0 })).toBe(false);
  });

  it("rows show every field, unknown ones too, escaped", () => {
    const row = auditRow({
      ts: T,
      decision: "weird\u001b[2J",
      user: "u",
      argv: ["echo", "a\u202eb"],
      extra: "x\ny",
      pid: 7,
    });
    expect(row[0]).toBe("2026-12-01T12:00:00Z");
    expect(row[1]).toBe("weird\\x1b[2J");
    expect(row[2]).toBe("-");
    expect(row[6]).toBe("echo $'a\\\\u202eb'");
    expect(row[7]).toBe("extra=x\\ny pid=7");
    expect(row.join("")).not.toMatch(/[\u0000-\u001f\u202e]/);
  });

  it("splits lines across chunks and drops an overlong line without losing the count", () => {
    const s = new LineSplitter();
    expect(s.push("ab")).toEqual([]);
    expect(s.push("c\nde")).toEqual(["abc"]);
    expect(s.push("f\n")).toEqual(["def"]);
    expect(s.push("x".repeat(MAX_AUDIT_LINE))).toEqual([]);
    expect(s.push("x".repeat(10))).toEqual([]);
    expect(s.push("y\nok\n")).toEqual([undefined, "ok"]);
  });
});

const dir = mkdtempSync(join(tmpdir(), "apes-audit-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const paths = pathsFrom({ prefix: "/p", sysconfdir: "/p/etc", localstatedir: dir }, "test");
const log = paths.auditLog;

function run(opts: Parameters<typeof audit>[1], json = false, signal?: AbortSignal, uid = 0) {
  const ctx = fakeContext({ globals: { json }, clock: { now: () => NOW_MS, sleep: realSleep } });
  const done = audit(ctx, opts, { getuid: () => uid, paths: () => paths, pollMs: 10, signal });
  return { ctx, done };
}
const realSleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });

async function until(check: () => boolean, what: string) {
  for (let i = 0; i < 500 && !check(); i++) await realSleep(10);
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

describe("apes audit (a file on disk)", () => {
  it("refuses a non-root caller with 77 and the sudo hint", async () => {
    const { done } = run({}, false, undefined, 1000);
    await expect(done).rejects.toMatchObject({ exitCode: 77, hint: "sudo apes audit" });
    await expect(done).rejects.toBeInstanceOf(CliError);
  });

  it("--json passes the matching lines through byte for byte; a malformed line is reported and skipped", async () => {
    const { mkdirSync } = await import("node:fs");
    mkdirSync(join(dir, "log", "apes"), { recursive: true });
    writeFileSync(log, `${LINES[0]}\nnot json\n${LINES[1]}\n[]\n${LINES[2]}\n${LINES[3]}\n`);
    const { ctx, done } = run({ user: "deploy" }, true);
    await done;
    expect(ctx.stdout.text).toBe(`${LINES[0]}\n${LINES[1]}\n`);
    expect(ctx.stderr.text).toBe(
      `apes: ${log}:2: not JSON; skipped\napes: ${log}:4: not a JSON object; skipped\n`,
    );
    const table = run({ denied: true });
    await table.done;
    const rows = table.ctx.stdout.text.trimEnd().split("\n");
    expect(rows[0]).toMatch(/^TIME +DECISION +REASON +USER +RUN AS +GRANT +COMMAND +OTHER$/);
    expect(rows.slice(1).map((r) => r.split(/ {2,}/)[2])).toEqual(["grant_denied", "config_missing"]);
    expect(rows[1]).toContain("rm -rf /");
  });

  it("--follow prints appended lines, reopens a rotated file, and ends cleanly on abort", async () => {
    writeFileSync(log, `${LINES[0]}\n`);
    const stop = new AbortController();
    const { ctx, done } = run({ follow: true }, true, stop.signal);
    await until(() => ctx.stdout.text.includes('"g1"'), "the existing line");
    appendFileSync(log, `${LINES[1]}\n`);
    await until(() => ctx.stdout.text.includes('"g2"'), "an appended line");
    // logrotate's default: rename, then a new file at the path.
    renameSync(log, `${log}.1`);
    appendFileSync(`${log}.1`, `${LINES[2]}\n`); // the writer still had the old file open
    writeFileSync(log, `${LINES[3]}\n`);
    await until(() => ctx.stdout.text.includes("config_missing"), "the line in the new file");
    stop.abort();
    await done;
    expect(ctx.stdout.text).toBe(`${LINES.join("\n")}\n`);
    expect(ctx.stderr.text).toBe("");
  });

  it("--follow as a table: the header first, then each row as it comes", async () => {
    writeFileSync(log, `${LINES[1]}\n`);
    const stop = new AbortController();
    const { ctx, done } = run({ follow: true }, false, stop.signal);
    await until(() => ctx.stdout.text.includes("grant_denied"), "the row");
    stop.abort();
    await done;
    const rows = ctx.stdout.text.trimEnd().split("\n");
    expect(rows[0]).toMatch(/^TIME {2}DECISION/);
    expect(rows.slice(1)).toEqual([expect.stringMatching(/^2026-12-01T11:50:00Z {2}deny {2}grant_denied/)]);
  });
});
