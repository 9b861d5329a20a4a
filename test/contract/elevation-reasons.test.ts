import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import {
  auditReasons,
  ELEVATION_EXIT,
  REASON_PATTERN,
  REQUESTER_PREFIX,
  REQUESTER_REASONS,
  SHIM_REASONS,
  VERIFIER_REASONS,
} from "../../protocol/elevation.ts";
import { MAX_JWT_LENGTH } from "../../protocol/jwt.ts";
import { DEFAULT_RUN_AS } from "../../protocol/names.ts";
import { current, GENERATED, REPO, render } from "../../scripts/elevation-docs.ts";

/**
 * protocol/elevation.ts is the one list of audit reasons: the shim's C literals, the TypeScript
 * producers and the documents must all agree with it.
 */

const read = (path: string) => readFileSync(join(REPO, path), "utf8");

/** The shim's sources (not its tests or fuzz harness). */
const C_SOURCES = readdirSync(join(REPO, "native"))
  .filter((f) => f.endsWith(".c") && !f.startsWith("test-"))
  .map((f) => `native/${f}`);

/** The shim's exit enum: `EXIT_NAME = N`. */
function exitEnum(c: string): Map<string, number> {
  return new Map([...c.matchAll(/\b(EXIT_[A-Z_]+)\s*=\s*(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

interface Extracted {
  /** Every reason literal with the exit status of its deny() when that is a constant. */
  literals: { code: string; exit?: string; where: string }[];
  /** Calls whose reason the extractor cannot read: a reason from somewhere new. */
  unreadable: string[];
}

/**
 * The reason literals of a C source: deny("x", EXIT, ...), audit(decision, "x"), leave(code, ... "x" ...),
 * and the assignments to the one variable `reason` (strcpy(reason, "x"), reason = ... "x" ...). A
 * deny() or audit() call with any other reason expression is unreadable, so a new way of passing a
 * reason fails this test instead of slipping past it.
 */
function extractReasons(source: string, file: string): Extracted {
  // Comments out (their lines kept, for the line numbers); no string literal here holds a comment.
  const c = source.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, (m) => m.replace(/[^\n]/g, " "));
  const literals: Extracted["literals"] = [];
  const unreadable: string[] = [];
  const lineOf = (i: number) => `${file}:${c.slice(0, i).split("\n").length}`;
  const lits = (text: string, where: string) => {
    for (const m of text.matchAll(/"([a-z0-9_]+)"/g)) literals.push({ code: m[1]!, where });
  };
  for (const m of c.matchAll(/(?<!(?:void|int)\s+)\bdeny\(\s*([^,]+),\s*([^,]+),/g)) {
    const arg = m[1]!.trim();
    const lit = /^"([a-z0-9_]+)"$/.exec(arg);
    if (lit) literals.push({ code: lit[1]!, exit: m[2]!.trim(), where: lineOf(m.index) });
    else if (arg !== "reason") unreadable.push(`${lineOf(m.index)}: deny(${arg}, ...)`);
  }
  for (const m of c.matchAll(/(?<!(?:void|int)\s+)\baudit\(\s*([^,]+),\s*([^)]+)\)/g)) {
    const arg = m[2]!.trim();
    if (arg === '""' || arg === "reason") continue;
    if (/^"[a-z0-9_]+"$/.test(arg)) lits(arg, lineOf(m.index));
    else unreadable.push(`${lineOf(m.index)}: audit(..., ${arg})`);
  }
  for (const m of c.matchAll(/(?<!(?:void|int)\s+)\bleave\(\s*[^,]+,\s*([^,]+),/g)) {
    if (m[1]!.trim() !== "reason") lits(m[1]!, lineOf(m.index));
  }
  for (const m of c.matchAll(/\bstrcpy\(\s*reason\s*,\s*("[^"]*")\s*\)/g)) lits(m[1]!, lineOf(m.index));
  // An assigned value's own literals; a call's arguments (the verdict's "reason" key) are not codes.
  for (const m of c.matchAll(/(?<![=!<>])\breason\s*=(?!=)([^;]+);/g))
    lits(m[1]!.replace(/\w+\([^)]*\)/g, ""), lineOf(m.index));
  return { literals, unreadable };
}

const shimCodes = auditReasons()
  .filter((r) => r.producers.includes("shim"))
  .map((r) => r.code);

describe("the shim's reason codes (native/*.c)", () => {
  const sources = C_SOURCES.map((f) => ({ file: f, text: read(f) }));
  const all = sources.map((s) => extractReasons(s.text, s.file));
  const literals = all.flatMap((e) => e.literals);

  it("are each listed in protocol/elevation.ts as written by the shim, and each listed one is in the C", () => {
    expect(all.flatMap((e) => e.unreadable)).toEqual([]);
    expect(literals.length).toBeGreaterThan(20);
    const found = new Set(literals.map((l) => l.code));
    expect([...found].filter((c) => !shimCodes.includes(c)).sort()).toEqual([]);
    expect(shimCodes.filter((c) => !found.has(c)).sort()).toEqual([]);
  });

  it("end with the exit status the list gives", () => {
    const exits = exitEnum(read("native/apes-shim.c"));
    const wrong: string[] = [];
    for (const l of literals) {
      if (l.exit === undefined) continue;
      const status = /^\d+$/.test(l.exit) ? Number(l.exit) : exits.get(l.exit);
      const listed = (SHIM_REASONS as Record<string, { exit: number }>)[l.code]?.exit;
      if (status !== listed)
        wrong.push(`${l.where}: ${l.code} exits ${l.exit} (${status}), listed ${listed}`);
    }
    expect(wrong).toEqual([]);
  });

  it("prefix a requester's code with REQUESTER_PREFIX, in a buffer that holds the longest code", () => {
    const shim = read("native/apes-shim.c");
    expect(shim).toContain(`snprintf(reason, sizeof reason, "${REQUESTER_PREFIX}%.64s", token)`);
    expect(shim).toContain(`static char reason[sizeof "${REQUESTER_PREFIX}" + 64];`);
  });

  it("use the exit statuses of ELEVATION_EXIT, which cli/exit-codes.ts shares", () => {
    const names: Record<string, keyof typeof ELEVATION_EXIT> = {
      EXIT_USAGE: "usage",
      EXIT_UNAVAILABLE: "unavailable",
      EXIT_PENDING: "pending",
      EXIT_DENIED: "denied",
      EXIT_CONFIG: "config",
      EXIT_CANNOT_EXEC: "cannot_execute",
      EXIT_NOT_FOUND: "not_found",
      EXIT_INTERRUPTED: "interrupted",
    };
    const exits = Object.fromEntries(exitEnum(read("native/apes-shim.c")));
    expect(Object.keys(exits).sort()).toEqual(Object.keys(names).sort());
    for (const [c, k] of Object.entries(names)) expect([c, exits[c]]).toEqual([c, ELEVATION_EXIT[k]]);
    expect(ELEVATION_EXIT).toEqual({
      error: ExitCode.ERROR,
      usage: ExitCode.USAGE,
      unavailable: ExitCode.UNAVAILABLE,
      pending: ExitCode.TEMPFAIL,
      denied: ExitCode.NOPERM,
      config: ExitCode.CONFIG,
      cannot_execute: ExitCode.CANNOT_EXECUTE,
      not_found: ExitCode.NOT_FOUND,
      interrupted: ExitCode.INTERRUPTED,
    });
  });

  it("the extractor catches an unlisted code and a reason it cannot read (not vacuous)", () => {
    const sample = [
      "static void deny(const char *reason, int code, const char *fmt, ...) {",
      '  deny("made_up_code", EXIT_DENIED, "x");',
      '  deny(some_variable, EXIT_DENIED, "x");',
      '  audit("deny", other);',
      '  if (x) reason = "another_one";',
    ].join("\n");
    const e = extractReasons(sample, "sample.c");
    expect(e.literals.map((l) => l.code)).toEqual(["made_up_code", "another_one"]);
    expect(e.literals[0]!.exit).toBe("EXIT_DENIED");
    expect(e.unreadable).toHaveLength(2);
    expect(shimCodes).not.toContain("made_up_code");
  });
});

describe("the shim's other shared facts", () => {
  it("takes a token of at most MAX_JWT_LENGTH and runs as DEFAULT_RUN_AS without --as", () => {
    const max = /^#define MAX_TOKEN \((\d+) \* (\d+)\) /m.exec(read("native/apes-shim.c"));
    expect(Number(max?.[1]) * Number(max?.[2])).toBe(MAX_JWT_LENGTH);
    expect(read("native/elev.c")).toContain(`e->run_as = "${DEFAULT_RUN_AS}";`);
  });
});

describe("every listed code", () => {
  it("is unique, in the reason charset the shim accepts, and a requester's fits its prefix buffer", () => {
    const codes = auditReasons().map((r) => r.code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(c).toMatch(REASON_PATTERN);
    for (const c of Object.keys(REQUESTER_REASONS)) expect(c).toMatch(REASON_PATTERN);
  });

  it("is produced: a requester's code in cli/elevation/request.ts, a verifier's in verifier/ or protocol/authz.ts", () => {
    const requester = read("cli/elevation/request.ts");
    const verifier = ["verifier/decide.ts", "verifier/verify.ts", "verifier/policy.ts", "protocol/authz.ts"]
      .map(read)
      .join("\n");
    const unused = [
      ...Object.keys(REQUESTER_REASONS).filter((c) => !requester.includes(`"${c}"`)),
      ...Object.keys(VERIFIER_REASONS).filter((c) => !verifier.includes(`"${c}"`)),
    ];
    expect(unused).toEqual([]);
  });
});

describe("the documents", () => {
  for (const [file, blocks] of Object.entries(GENERATED)) {
    for (const block of blocks) {
      it(`${file}'s ${block} block is the one scripts/elevation-docs.ts generates (npm run docs)`, () => {
        expect(current(read(file), block)).toBe(render(block));
      });
    }
  }

  it("the reasons block lists every code once", () => {
    const table = render("reasons");
    for (const r of auditReasons()) expect(table.split(`| \`${r.code}\` |`)).toHaveLength(2);
  });
});
