import { describe, expect, it } from "vitest";
import { ExitCode } from "../../cli/exit-codes.ts";
import { runInProcess } from "../helpers/fake-context.ts";

describe("CLI skeleton", () => {
  it("maps an unknown command to the usage exit code with a hint", async () => {
    const r = await runInProcess(["frobnicate"]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain("apes --help");
  });

  it("prints the exit-code table, as JSON too", async () => {
    const r = await runInProcess(["help", "exit-codes"]);
    expect(r.code).toBe(0);
    for (const code of [0, 1, 2, 69, 75, 77, 78, 126, 127, 130])
      expect(r.stdout).toMatch(new RegExp(`\\b${code}\\b`));
    const j = await runInProcess(["--json", "help", "exit-codes"]);
    expect(JSON.parse(j.stdout)).toContainEqual(expect.objectContaining({ code: 77, name: "not permitted" }));
  });

  it("rejects an unknown help topic with exit 2", async () => {
    const r = await runInProcess(["help", "nonsense"]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.stderr).toContain('no help topic or command "nonsense"');
  });
});
