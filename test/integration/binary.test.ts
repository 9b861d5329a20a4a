import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { collect } from "../helpers/process.ts";

const root = join(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };

/** Runs dist/apes like `env -i apes ...` from `/`: no environment at all, not even PATH or HOME. */
function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return collect(spawn(bin, args, { cwd: "/", env: {}, stdio: ["pipe", "pipe", "pipe"] }));
}

describe("dist/apes with an empty environment, from /", () => {
  it("--version prints the package.json version", async () => {
    for (const flag of ["--version", "-V"]) {
      const r = await run([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`apes ${pkg.version}\n`);
      expect(r.stderr).toBe("");
    }
  });

  it("--help lists the commands, the global options and examples", async () => {
    const r = await run(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: apes /);
    expect(r.stdout).toMatch(/^ {2}dns\b/m);
    expect(r.stdout).toMatch(/^ {2}help\b/m);
    expect(r.stdout).toContain("--json");
    expect(r.stdout).toContain("Examples:");
    expect(r.stdout).toContain("$ apes help exit-codes");
    expect(r.stderr).toBe("");
  });

  it("a subcommand's --help has examples too", async () => {
    const r = await run(["dns", "check", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Usage: apes dns check [options] <email>");
    expect(r.stdout).toContain("$ apes dns check alice@example.com");
  });

  it("an unknown command exits 2 with a helpful message on stderr", async () => {
    const r = await run(["frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain("apes --help");
  });

  it("a misspelt command gets a suggestion", async () => {
    const r = await run(["dsn"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Did you mean dns?");
  });

  it("help exit-codes prints the table", async () => {
    const r = await run(["help", "exit-codes"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Exit codes used by apes:");
    for (const code of [0, 1, 2, 69, 75, 77, 78, 126, 127, 130])
      expect(r.stdout).toMatch(new RegExp(`^ *${code} `, "m"));
    const j = await run(["--json", "help", "exit-codes"]);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toContainEqual({
      code: 69,
      name: "unavailable",
      description: expect.stringContaining("DNS"),
    });
  });

  it("a missing argument exits 2", async () => {
    const r = await run(["dns", "check"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("missing required argument 'email'");
  });
});

describe("dist/apes writing into a closed pipe (`apes --help | head -0`)", () => {
  it("exits quietly instead of crashing with EPIPE", async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(bin, ["--help"], { cwd: "/", env: {}, stdio: ["ignore", "pipe", "pipe"] });
      // Close our read end before the child has started: its first write meets a closed pipe.
      child.stdout.destroy();
      let stderr = "";
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, stderr }));
    });
    expect(r.stderr).not.toMatch(/EPIPE|Error|at /);
    expect(r.code).toBe(0);
  });
});
