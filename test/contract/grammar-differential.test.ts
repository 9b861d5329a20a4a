/**
 * Differential test: the setuid shim's elevation grammar (C, native/elev.c, run through
 * native/test-grammar) and cli/elevation/grammar.ts agree on thousands of generated argv vectors:
 * the same argv is an elevation for both or for neither, with the same options, command and run_as.
 * The two must never disagree, or the shim would elevate what the CLI parses differently.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseElevation } from "../../cli/elevation/grammar.ts";
import { REPO } from "../helpers/shim.ts";

let dir: string;
let testGrammar: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "apes-test-grammar-"));
  testGrammar = join(dir, "test-grammar");
  execFileSync("make", ["-s", `NATIVE_OUT=${dir}`, testGrammar], { cwd: REPO, stdio: "pipe" });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Verdict = { ok: false } | { ok: true; options: string[]; command: string[]; runAs: string };

function shimVerdicts(vectors: readonly string[][]): Verdict[] {
  const parts: Buffer[] = [];
  for (const v of vectors) {
    parts.push(Buffer.from(`${v.length}\0`));
    for (const a of v) parts.push(Buffer.from(a, "utf8"), Buffer.from([0]));
  }
  const out = execFileSync(testGrammar, ["--batch"], { input: Buffer.concat(parts), maxBuffer: 64 << 20 });
  const lines = out.toString("utf8").split("\n");
  lines.pop();
  return lines.map((line, i) => {
    if (line === "no") return { ok: false };
    const [, optStart, optEnd, cmdStart, runAsHex] = line.split(" ");
    const v = vectors[i]!;
    return {
      ok: true,
      options: v.slice(Number(optStart), Number(optEnd)),
      command: v.slice(Number(cmdStart)),
      runAs: Buffer.from(runAsHex ?? "", "hex").toString("utf8"),
    };
  });
}

function tsVerdict(argv: string[]): Verdict {
  const r = parseElevation(argv);
  if (!r.ok) return { ok: false };
  return { ok: true, options: r.args.options, command: r.args.command, runAs: r.args.as ?? "root" };
}

// Tokens that exercise every rule: options with and without `=`, repeats, unknown options, `run`,
// `--` in every position, empty and odd strings (argv cannot hold NUL).
const token = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom(
      "--",
      "run",
      "--reason",
      "--as",
      "--approval",
      "--duration",
      "--grant",
      "--timeout",
    ),
  },
  {
    weight: 3,
    arbitrary: fc.constantFrom("--no-wait", "--json", "--debug", "--no-color", "-x", "--unknown", "-", "---"),
  },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      "--as=bob",
      "--reason=",
      "--as=",
      "--=x",
      "--reason=a=b",
      "--json=1",
      "--no-wait=",
    ),
  },
  {
    weight: 3,
    arbitrary: fc.constantFrom("ls", "/bin/true", "", " ", "a b", "run", "x=y", "--as bob", "é", "\u202e"),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 6 }).filter((s) => !s.includes("\0")) },
);

describe("the shim's grammar equals the CLI's", () => {
  it("on 4,000 generated argv vectors", () => {
    const vectors = fc.sample(fc.array(token, { maxLength: 10 }), { numRuns: 4000, seed: 20261201 });
    const shim = shimVerdicts(vectors);
    expect(shim.length).toBe(vectors.length);
    const mismatches = vectors.filter((v, i) => JSON.stringify(shim[i]) !== JSON.stringify(tsVerdict(v)));
    expect(mismatches.slice(0, 5)).toEqual([]);
    // The sample reaches both outcomes, so the comparison is not vacuous.
    expect(shim.filter((v) => v.ok).length).toBeGreaterThan(200);
    expect(shim.filter((v) => !v.ok).length).toBeGreaterThan(200);
  });

  it("on the hand-picked edge cases", () => {
    const edge = [
      ["--", "ls"],
      ["run", "--", "ls"],
      ["run", "run", "--", "ls"],
      ["--as", "--", "--", "ls"],
      ["--as", "bob", "--as", "eve", "--", "ls"],
      ["--as=bob", "--", "ls"],
      ["--reason"],
      ["--"],
      ["ls"],
      ["--json", "--json", "--", "x"],
      ["--reason", "--", "ls"],
    ];
    const shim = shimVerdicts(edge);
    for (const [i, v] of edge.entries()) expect(shim[i], JSON.stringify(v)).toEqual(tsVerdict(v));
  });
});
