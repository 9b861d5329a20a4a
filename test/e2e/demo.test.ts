import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

// The README's quick start is `make demo`: keep it true by running the script CI would run for a
// user (as root, with the built dist/apes), and check it leaves nothing behind.
describe("make demo (the README's quick start)", () => {
  it("runs `apes --reason demo -- id -u` as the demo agent, approved by the human, and prints 0", () => {
    const root = join(import.meta.dirname, "..", "..");
    const r = spawnSync("bash", [join(root, "scripts", "demo.sh")], {
      cwd: root,
      encoding: "utf8",
      timeout: 120_000,
      env: { ...process.env, NO_COLOR: "1" },
    });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = r.stdout;
    // The approved command's own output: uid 0, on a line of its own, after the result header.
    const result = out.slice(out.indexOf("== result"));
    expect(result.split("\n")).toContain("0");
    expect(out).toMatch(/"decision":"allow".*"argv":\["id","-u"\]/);
    expect(out).toContain("demo ok");
    const prefix = /build and install into (\/tmp\/apes-demo\.\w+)/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(existsSync(prefix!)).toBe(false);
  });
});
