/**
 * Differential test: the setuid shim's cmd_hash (C, native/elev.c, run through native/test-hash)
 * equals protocol/cmd-hash.ts cmdHash for thousands of generated argv vectors, and the shim rejects
 * exactly the byte strings a strict UTF-8 decoder rejects. Vectors are sent in batches (one process
 * per batch) so the test takes a few seconds.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { REPO } from "../helpers/shim.ts";

let dir: string;
let testHash: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "apes-test-hash-"));
  testHash = join(dir, "test-hash");
  execFileSync("make", ["-s", `NATIVE_OUT=${dir}`, testHash], { cwd: REPO, stdio: "pipe" });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs one batch: each vector is "<n>\0<arg>\0..." (raw bytes); one output line per vector. */
function shimHashes(vectors: readonly (readonly Buffer[])[]): string[] {
  const parts: Buffer[] = [];
  for (const v of vectors) {
    parts.push(Buffer.from(`${v.length}\0`));
    for (const a of v) parts.push(a, Buffer.from([0]));
  }
  const out = execFileSync(testHash, ["--batch"], { input: Buffer.concat(parts), maxBuffer: 64 << 20 });
  const lines = out.toString("utf8").split("\n");
  lines.pop();
  return lines;
}

// Characters JSON.stringify treats specially, and ones it must leave alone (argv cannot hold NUL).
const special = fc.constantFrom(
  '"',
  "\\",
  "/",
  "\b",
  "\f",
  "\n",
  "\r",
  "\t",
  "\u000b",
  "\u001b",
  "\u001f",
  "\u007f",
  "\u0080",
  "\u00e9",
  "\u2028",
  "\u2029",
  "\ufeff",
  "\uffff",
  "\u{1f412}",
  "\u{10ffff}",
  "u00",
  " ",
  "",
);
const control = fc.integer({ min: 1, max: 0x1f }).map((c) => String.fromCharCode(c));
const anyChar = fc.string({ unit: "binary", minLength: 1, maxLength: 1 });
const element = fc
  .array(fc.oneof({ weight: 3, arbitrary: special }, control, { weight: 2, arbitrary: anyChar }), {
    maxLength: 24,
  })
  .map((cs) => cs.join("").replaceAll("\0", ""));
const vector = fc.array(element, { minLength: 1, maxLength: 8 });

describe("shim cmd_hash equals cmdHash (differential)", () => {
  it("agrees on thousands of generated argv vectors", () => {
    let total = 0;
    fc.assert(
      fc.property(fc.array(vector, { minLength: 50, maxLength: 150 }), (vectors) => {
        const got = shimHashes(vectors.map((v) => v.map((a) => Buffer.from(a, "utf8"))));
        total += vectors.length;
        expect(got).toEqual(vectors.map((v) => cmdHash(v)));
      }),
      { numRuns: 40 },
    );
    expect(total).toBeGreaterThanOrEqual(2000);
  });

  it("agrees on fixed edge cases", () => {
    const cases = [
      ["a", "b c"],
      ["a b"],
      [""],
      ["", ""],
      ['"\\'],
      ["\u2028\u2029"],
      ["\u007f\u0001\u001f"],
      ["\u{1f412}", "🙈🙉🙊"],
      ["systemctl", "restart", "nginx"],
    ];
    expect(shimHashes(cases.map((v) => v.map((a) => Buffer.from(a))))).toEqual(cases.map((v) => cmdHash(v)));
    // The ambiguous joined form must not collide in the canonical one.
    expect(cmdHash(["a b"])).not.toEqual(cmdHash(["a", "b"]));
  });

  it("rejects invalid UTF-8: overlong, surrogates, truncated, above U+10FFFF", () => {
    const invalid = [
      [0xc0, 0xaf], // overlong "/"
      [0xc1, 0xbf],
      [0xe0, 0x80, 0xaf], // overlong, 3 bytes
      [0xf0, 0x80, 0x80, 0xaf], // overlong, 4 bytes
      [0xed, 0xa0, 0x80], // U+D800
      [0xed, 0xbf, 0xbf], // U+DFFF
      [0xf4, 0x90, 0x80, 0x80], // U+110000
      [0xf7, 0xbf, 0xbf, 0xbf],
      [0xc3], // truncated
      [0xe2, 0x80],
      [0xf0, 0x9f, 0x90],
      [0x80], // lone continuation
      [0xfe],
      [0xff],
      [0x61, 0xc3, 0x28],
    ].map((b) => Buffer.from(b));
    const vectors = invalid.flatMap((bad) => [
      [bad],
      [Buffer.from("ok"), bad],
      [Buffer.concat([Buffer.from("prefix "), bad, Buffer.from(" suffix")])],
    ]);
    expect(shimHashes(vectors)).toEqual(vectors.map(() => "invalid-utf8"));
  });

  it("accepts exactly what a strict UTF-8 decoder accepts, on random bytes", () => {
    const decoder = new TextDecoder("utf-8", { fatal: true });
    const bytes = fc
      .uint8Array({ maxLength: 12 })
      .map((a) => Buffer.from(a.filter((b) => b !== 0)))
      // bias towards the interesting lead bytes
      .chain((b) =>
        fc
          .constantFrom(0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5)
          .map((lead) => (b.length > 0 && b[0]! < 0x80 ? Buffer.concat([Buffer.from([lead]), b]) : b)),
      );
    let valid = 0;
    let invalid = 0;
    fc.assert(
      fc.property(fc.array(bytes, { minLength: 100, maxLength: 200 }), (elements) => {
        const got = shimHashes(elements.map((e) => [e]));
        const want = elements.map((e) => {
          try {
            const s = decoder.decode(e);
            valid++;
            return cmdHash([s]);
          } catch {
            invalid++;
            return "invalid-utf8";
          }
        });
        expect(got).toEqual(want);
      }),
      { numRuns: 20 },
    );
    expect(valid).toBeGreaterThan(100);
    expect(invalid).toBeGreaterThan(100);
  });

  it("prints the hash for its own argv (single-vector mode)", () => {
    expect(execFileSync(testHash, ["a", "b c"], { encoding: "utf8" }).trim()).toBe(cmdHash(["a", "b c"]));
  });
});
