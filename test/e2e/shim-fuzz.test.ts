/**
 * libFuzzer (with ASan and UBSan) over everything the shim does with caller- or verifier-controlled
 * bytes before it runs anything: the elevation grammar, UTF-8 validation and argv limits, cmd_hash,
 * JSON escaping (must round-trip through the parser) and the verdict parser. Bounded to 20 s of
 * fuzzing. Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev; .ci/run installs them):
 * without it this test fails rather than skips.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, expect, it } from "vitest";
import { REPO } from "../helpers/shim.ts";

const dir = mkdtempSync(join(tmpdir(), "apes-fuzz-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("survives 20 s of fuzzing without a crash or sanitizer report", { timeout: 180_000 }, async () => {
  const r = await promisify(execFile)("make", ["-s", "native-fuzz", `NATIVE_OUT=${dir}`, "FUZZ_TIME=20"], {
    cwd: REPO,
    maxBuffer: 64 << 20,
  }).catch((e: { code?: number; stderr?: string; stdout?: string }) => e);
  const stderr = String(r.stderr ?? "");
  expect("code" in r && r.code, stderr.slice(-4000)).toBeFalsy();
  const runs = /Done (\d+) runs/.exec(stderr);
  expect(runs, stderr.slice(-2000)).not.toBeNull();
  expect(Number(runs![1])).toBeGreaterThan(10_000);
  expect(stderr).not.toMatch(/ERROR: (AddressSanitizer|libFuzzer)|runtime error:/);
  expect(readdirSync(dir).filter((f) => /^(crash|leak|timeout|oom)-/.test(f))).toEqual([]);
});
