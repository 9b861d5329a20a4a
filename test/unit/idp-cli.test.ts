import { mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseListen, startError } from "../../cli/commands/idp/serve.ts";
import { CliError } from "../../cli/errors.ts";
import { runInProcess } from "../helpers/fake-context.ts";
import { newKey } from "../helpers/idp.ts";

describe("apes idp users / keys (in process, fake context)", () => {
  it("adds, lists and disables users in the default data dir under XDG_DATA_HOME", async () => {
    const home = mkdtempSync(join(tmpdir(), "apes-idp-cli-"));
    const k = newKey("alice");
    const add = await runInProcess(
      ["idp", "users", "add", "Alice@Example.com", "--human", "--key", k.publicLine],
      {
        home,
      },
    );
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout).toMatch(/^added human alice@example\.com \(SHA256:/);
    const dataDir = join(home, ".local/share/apes/idp");
    expect(statSync(dataDir).mode & 0o777).toBe(0o700);
    const agent = await runInProcess(
      ["idp", "users", "add", "bot@example.com", "--agent", "--owner", "alice@example.com"],
      { home },
    );
    expect(agent.code, agent.stderr).toBe(0);
    const list = await runInProcess(["--json", "idp", "users", "list"], { home });
    const users = JSON.parse(list.stdout);
    expect(users).toEqual([
      expect.objectContaining({ email: "alice@example.com", kind: "human", disabled: false }),
      expect.objectContaining({ email: "bot@example.com", kind: "agent", owner: "alice@example.com" }),
    ]);
    const table = await runInProcess(["idp", "users", "list"], { home });
    expect(table.stdout).toMatch(/^EMAIL\s+KIND\s+OWNER/);
    expect((await runInProcess(["idp", "users", "disable", "bot@example.com"], { home })).code).toBe(0);
    const after = JSON.parse((await runInProcess(["--json", "idp", "users", "list"], { home })).stdout);
    expect(after[1].disabled).toBe(true);
    const missing = await runInProcess(["idp", "users", "disable", "ghost@example.com"], { home });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no user ghost@example.com/);
    const rotate = await runInProcess(["--json", "idp", "keys", "rotate"], { home });
    expect(rotate.code, rotate.stderr).toBe(0);
    expect(JSON.parse(rotate.stdout).kid).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it("explains what is wrong with its arguments", async () => {
    const home = mkdtempSync(join(tmpdir(), "apes-idp-cli-"));
    const r = await runInProcess(["idp", "users", "add", "x@example.com", "--agent"], { home });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/an agent needs --owner/);
    const k = await runInProcess(
      ["idp", "users", "add", "x@example.com", "--human", "--key", "/no/such.pub"],
      { home },
    );
    expect(k.code).toBe(2);
    expect(k.stderr).toMatch(/no such file/);
  });
});

describe("parseListen", () => {
  it("accepts host:port, [v6]:port and port 0", () => {
    expect(parseListen("127.0.0.1:0")).toEqual({ host: "127.0.0.1", port: 0 });
    expect(parseListen("[::1]:8443")).toEqual({ host: "::1", port: 8443 });
    expect(parseListen("localhost:80")).toEqual({ host: "localhost", port: 80 });
  });
  it("refuses the rest", () => {
    for (const bad of ["", "8080", "host:", "host:99999", ":80", "a:b:c"]) {
      expect(() => parseListen(bad), bad).toThrow(CliError);
    }
  });
});

describe("apes idp serve start-up errors", () => {
  const fail = (code: string, extra: Record<string, string> = {}) =>
    startError(Object.assign(new Error(`${code}: failed`), { code, ...extra }), { listen: "127.0.0.1:8080" });

  it("maps each cause to an exit code a supervisor can act on", () => {
    expect(fail("EADDRINUSE").exitCode).toBe(69);
    expect(fail("EACCES", { syscall: "listen" }).exitCode).toBe(77);
    // A data dir owned by someone else (root ran an admin command first): configuration, not retryable.
    const eperm = fail("EPERM", { syscall: "chmod" });
    expect(eperm.exitCode).toBe(78);
    expect(eperm.hint).toContain("chown");
    expect(fail("ENOENT").exitCode).toBe(78);
    expect(startError(new Error("boom"), { listen: "x" }).exitCode).toBe(1);
  });
});
