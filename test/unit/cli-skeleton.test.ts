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

  it("every command, group and subcommand has help with `$ apes` examples", async () => {
    const { buildProgram } = await import("../../cli/program.ts");
    const { program } = await buildProgram();
    type Cmd = import("commander").Command & { _hidden?: boolean };
    const walk = (cmd: Cmd, path: string[]): string[][] =>
      (cmd.commands as Cmd[])
        .filter((c) => !c._hidden)
        .flatMap((c) => [[...path, c.name()], ...walk(c, [...path, c.name()])]);
    const paths = walk(program as Cmd, []);
    expect(paths.length).toBeGreaterThanOrEqual(35);
    const missing: string[] = [];
    for (const p of paths) {
      const h = await runInProcess([...p, "--help"]);
      expect(h.code, p.join(" ")).toBe(0);
      if (!/\$ (sudo )?apes /.test(h.stdout)) missing.push(p.join(" "));
    }
    expect(missing).toEqual([]);
  });
});
