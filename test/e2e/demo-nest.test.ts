import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

// `make demo-nest` (scripts/demo-nest.sh): the Nest, its owner, the approval, the agent as its own user
// and identity, and the audit trails of the shim and the troop.
const root = join(import.meta.dirname, "..", "..");

describe("make demo-nest", () => {
  it("spawns an agent through the troop for alice; it runs as its own identity; the audit names everyone", () => {
    const r = spawnSync("bash", [join(root, "scripts", "demo-nest.sh")], {
      cwd: root,
      encoding: "utf8",
      timeout: 240_000,
      env: { ...process.env, NO_COLOR: "1" },
    });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    const out = r.stdout;
    expect(out).toContain("whoami: demobot+agent@demo.example (agent)");
    expect(out).toMatch(
      /"decision":"allow".*"user":"_apes-nest".*"run_as":"root".*"sub":"nest-demo\+agent@demo\.example","decided_by":"alice@demo\.example"/,
    );
    expect(out).toMatch(/"decision":"allow".*"run_as":"demobot".*"argv":\[[^\]]*"agents","run","demobot"\]/);
    expect(out).toMatch(
      /"event":"intent.submitted","by":"alice@demo\.example","nest":"nest-demo\+agent@demo\.example"/,
    );
    expect(out).toContain("demo-nest ok");
    const prefix = /build and install into (\/tmp\/apes-demo-nest\.\w+)/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(existsSync(prefix!)).toBe(false);
  }, 260_000);
});
