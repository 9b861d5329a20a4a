import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DEFAULT_KEEP_WARM_MS, loadUserConfig, parseUserConfig } from "../../cli/config.ts";

/** `keep_warm` / APES_KEEP_WARM: how long the caller's warm requester stays (cli/elevation/resident.ts). */
describe("keep_warm", () => {
  it("defaults to 5 minutes, takes a duration or 0, and refuses anything else", async () => {
    expect((await parseUserConfig("", "/x/config.toml")).keepWarmMs).toBe(DEFAULT_KEEP_WARM_MS);
    expect(DEFAULT_KEEP_WARM_MS).toBe(300_000);
    expect((await parseUserConfig('keep_warm = "10m"', "/x/config.toml")).keepWarmMs).toBe(600_000);
    expect((await parseUserConfig('keep_warm = "0"', "/x/config.toml")).keepWarmMs).toBe(0);
    for (const bad of ['keep_warm = "soon"', "keep_warm = 5", 'keep_warm = "-1m"']) {
      const e = await parseUserConfig(bad, "/x/config.toml").catch((x: Error) => x);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).message).toContain('"keep_warm" must be');
    }
  });

  it("APES_KEEP_WARM wins over the file, and a bad value is an error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-keep-warm-"));
    try {
      writeFileSync(join(dir, "config.toml"), 'keep_warm = "10m"\n');
      expect((await loadUserConfig(dir, {})).keepWarmMs).toBe(600_000);
      expect((await loadUserConfig(dir, { APES_KEEP_WARM: "0" })).keepWarmMs).toBe(0);
      expect((await loadUserConfig(dir, { APES_KEEP_WARM: "90s" })).keepWarmMs).toBe(90_000);
      await expect(loadUserConfig(dir, { APES_KEEP_WARM: "later\u001b[2J" })).rejects.toThrow(
        /APES_KEEP_WARM: not a duration: later\\x1b/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
