import { describe, expect, it } from "vitest";
import { parseDuration as cliDuration } from "../../cli/config.ts";
import { parseDuration as idpDuration } from "../../idp/grants.ts";
import { durationSeconds, MAX_DURATION_TEXT, parseDurationMs } from "../../protocol/duration.ts";

describe("protocol/duration: one grammar", () => {
  it("reads seconds and unit pairs", () => {
    expect(parseDurationMs("90")).toBe(90_000);
    expect(parseDurationMs(" 30s ")).toBe(30_000);
    expect(parseDurationMs("1h30m")).toBe(5_400_000);
    expect(parseDurationMs("2d")).toBe(172_800_000);
    expect(parseDurationMs("250ms")).toBe(250);
  });

  it("refuses everything else", () => {
    for (const bad of [
      "",
      "m",
      "-5m",
      "1.5h",
      "10 m",
      "1y",
      "1h30",
      "5M",
      "1".repeat(MAX_DURATION_TEXT + 1),
      "9".repeat(30) + "d",
    ])
      expect(parseDurationMs(bad), bad).toBeUndefined();
  });

  it("whole seconds only for durationSeconds", () => {
    expect(durationSeconds("1500ms")).toBeUndefined();
    expect(durationSeconds("2000ms")).toBe(2);
    expect(durationSeconds(60)).toBe(60);
    expect(durationSeconds(1.5)).toBeUndefined();
    expect(durationSeconds(null)).toBeUndefined();
  });

  it("the CLI and the IdP agree on every text both accept", () => {
    for (const t of ["90", "30s", "5m", "1h30m", "2d", "1d12h"])
      expect(idpDuration(t) * 1000).toBe(cliDuration(t));
  });
});
