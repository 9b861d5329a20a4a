/**
 * The shim's C unit tests (native/test-unit.c: UTF-8, JSON escaping, cmd_hash, the elevation
 * grammar, argv limits, the verdict parser), compiled and run under AddressSanitizer and
 * UndefinedBehaviorSanitizer by `make native-test`.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, expect, it } from "vitest";
import { REPO } from "../helpers/shim.ts";

const dir = mkdtempSync(join(tmpdir(), "apes-native-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("passes the C unit tests under ASan/UBSan", { timeout: 120_000 }, async () => {
  const { stdout } = await promisify(execFile)("make", ["-s", "native-test", `NATIVE_OUT=${dir}`], {
    cwd: REPO,
    env: {
      ...process.env,
      ASAN_OPTIONS: "detect_leaks=1:abort_on_error=1",
      UBSAN_OPTIONS: "halt_on_error=1",
    },
  });
  const m = /native unit tests: (\d+) checks, (\d+) failed/.exec(stdout);
  expect(m, stdout).not.toBeNull();
  expect(Number(m![1])).toBeGreaterThan(90);
  expect(Number(m![2])).toBe(0);
});
