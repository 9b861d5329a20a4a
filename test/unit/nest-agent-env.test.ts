import { describe, expect, it } from "vitest";
import { encodeEnvLine, MAX_ENV_LINE_BYTES, parseEnvLine } from "../../cli/daemon/agent-env.ts";

/** The env line the Nest writes on `apes agents run`'s stdin: only allowed names, bounded, both ends. */
describe("agent env line", () => {
  it("carries only the listed names the Nest has, never the runner's own names", () => {
    const line = encodeEnvLine(["BOT", "MISSING", "HOME", "PATH", "APES_IDP"], {
      APES_IDP: "https://x",
      BOT: "x y",
      HOME: "/root",
      PATH: "/evil",
      OTHER: "s",
    });
    expect(line).toBe('env {"BOT":"x y"}\n');
    expect(parseEnvLine(line.trimEnd(), ["BOT"])).toEqual({ ok: true, env: { BOT: "x y" } });
    expect(parseEnvLine("env {}", ["BOT"])).toEqual({ ok: true, env: {} });
  });

  it("refuses names the spec does not list, reserved names, non-strings, non-JSON and other first lines", () => {
    for (const [line, allowed] of [
      ['env {"OTHER":"1"}', ["BOT"]],
      ['env {"PATH":"/tmp"}', ["PATH"]],
      ['env {"APES_AGENT":"x"}', ["APES_AGENT"]],
      ['env {"BOT":1}', ["BOT"]],
      ['env {"BOT":"a\\u0000b"}', ["BOT"]],
      ["env [1]", ["BOT"]],
      ["env {", ["BOT"]],
      ["pause", ["BOT"]],
      [`env {"BOT":"${"x".repeat(MAX_ENV_LINE_BYTES)}"}`, ["BOT"]],
    ] as const)
      expect(parseEnvLine(line, allowed).ok, line.slice(0, 40)).toBe(false);
    expect(() => encodeEnvLine(["BOT"], { BOT: "x".repeat(MAX_ENV_LINE_BYTES) })).toThrow(/over/);
  });
});
