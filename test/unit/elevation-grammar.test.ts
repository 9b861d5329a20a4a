import { describe, expect, it } from "vitest";
import {
  continueCommand,
  parseElevation,
  routeArgv,
  validateElevation,
} from "../../cli/elevation/grammar.ts";

function ok(argv: string[]) {
  const r = parseElevation(argv);
  if (!r.ok) throw new Error(`expected an elevation: ${r.error}`);
  return r.args;
}
function err(argv: string[]) {
  const r = parseElevation(argv);
  if (r.ok) throw new Error("expected a grammar error");
  return r.error;
}

describe("parseElevation (the shim's grammar)", () => {
  it("parses options, both value forms, and the command after --", () => {
    const a = ok([
      "--reason",
      "deploy hotfix",
      "--as=nobody",
      "--no-wait",
      "--",
      "systemctl",
      "restart",
      "nginx",
    ]);
    expect(a).toMatchObject({
      reason: "deploy hotfix",
      as: "nobody",
      noWait: true,
      command: ["systemctl", "restart", "nginx"],
    });
    expect(a.options).toEqual(["--reason", "deploy hotfix", "--as=nobody", "--no-wait"]);
  });
  it("accepts a leading run and the global flags", () => {
    expect(ok(["run", "--json", "--debug", "--no-color", "--", "id"])).toMatchObject({
      json: true,
      debug: true,
      noColor: true,
      command: ["id"],
    });
  });
  it("keeps everything after -- verbatim, options included", () => {
    expect(ok(["--", "ls", "--reason", "-la", "--"]).command).toEqual(["ls", "--reason", "-la", "--"]);
  });
  it("takes the next token as a value even when it looks like an option", () => {
    expect(ok(["--reason", "--", "--", "id"])).toMatchObject({ reason: "--", command: ["id"] });
  });
  it("requires -- and a non-empty command", () => {
    expect(err(["--reason", "x", "ls"])).toContain("put -- before the command");
    expect(err(["--reason", "x"])).toContain("missing --");
    expect(err(["--"])).toContain("no command");
    expect(err(["run"])).toContain("missing --");
  });
  it("rejects unknown options, missing values and repeats", () => {
    expect(err(["--force", "--", "id"])).toContain("unknown option --force");
    expect(err(["--reason"])).toContain("needs a value");
    expect(err(["--as", "a", "--as", "b", "--", "id"])).toContain("twice");
  });
  it("does not accept run when told not to (root-level routing)", () => {
    expect(parseElevation(["run", "--", "id"], false).ok).toBe(false);
  });
});

describe("routeArgv (root-level routing to `apes run`)", () => {
  it("routes elevations to run", () => {
    expect(routeArgv(["--reason", "r", "--", "id"])).toEqual(["run", "--reason", "r", "--", "id"]);
    expect(routeArgv(["--", "id"])).toEqual(["run", "--", "id"]);
    expect(routeArgv(["--json", "--", "id"])).toEqual(["run", "--json", "--", "id"]);
  });
  it("routes an elevation-only option without -- to run (which explains the missing --)", () => {
    expect(routeArgv(["--reason", "r", "ls"])).toEqual(["run", "--reason", "r", "ls"]);
    expect(routeArgv(["--debug", "--as=nobody", "ls"])).toEqual(["run", "--debug", "--as=nobody", "ls"]);
  });
  it("leaves commands, run itself, help and version alone", () => {
    for (const argv of [
      ["run", "--", "id"],
      ["grants", "list"],
      ["--json", "grants", "list"],
      ["--version"],
      ["--help"],
      [],
    ]) {
      expect(routeArgv(argv)).toEqual(argv);
    }
  });
});

describe("validateElevation", () => {
  const v = (argv: string[]) => validateElevation(ok(argv));
  it("defaults to a once grant run as root", () => {
    expect(v(["--", "id"])).toEqual({
      ok: true,
      request: {
        command: ["id"],
        reason: undefined,
        runAs: "root",
        approval: "once",
        durationS: undefined,
        grantId: undefined,
        timeoutMs: undefined,
        noWait: false,
      },
    });
  });
  it("parses timed grants with a duration, and timeouts", () => {
    expect(v(["--approval", "timed", "--duration", "1h", "--timeout", "90s", "--", "id"])).toMatchObject({
      ok: true,
      request: { approval: "timed", durationS: 3600, timeoutMs: 90_000 },
    });
  });
  it("rejects what does not make sense, with the reason", () => {
    expect(v(["--approval", "sometimes", "--", "id"])).toMatchObject({
      ok: false,
      error: expect.stringContaining("once, timed or always"),
    });
    expect(v(["--approval", "timed", "--", "id"])).toMatchObject({
      ok: false,
      error: expect.stringContaining("needs --duration"),
    });
    expect(v(["--duration", "1h", "--", "id"])).toMatchObject({
      ok: false,
      error: expect.stringContaining("only goes with"),
    });
    expect(v(["--approval", "timed", "--duration", "soon", "--", "id"])).toMatchObject({ ok: false });
    expect(v(["--timeout", "0", "--", "id"])).toMatchObject({ ok: false });
    expect(v(["--as", "root;rm", "--", "id"])).toMatchObject({
      ok: false,
      error: expect.stringContaining("Unix user"),
    });
    expect(v(["--grant", "a/b", "--", "id"])).toMatchObject({
      ok: false,
      error: expect.stringContaining("grant id"),
    });
    expect(v(["--reason", " ", "--", "id"])).toMatchObject({ ok: false });
  });
});

describe("continueCommand", () => {
  it("prints a command line the user can paste", () => {
    expect(continueCommand("g-1", { command: ["echo", "a b", "it's"], runAs: "root" })).toBe(
      "apes --grant g-1 -- echo 'a b' 'it'\\''s'",
    );
    expect(continueCommand("g-1", { command: ["id"], runAs: "nobody" })).toBe(
      "apes --grant g-1 --as nobody -- id",
    );
    expect(continueCommand("g-1", { command: ["printf", "%s", "a\x1b[2Kb", ""], runAs: "root" })).toBe(
      "apes --grant g-1 -- printf %s $'a\\x1b[2Kb' ''",
    );
  });
});
