import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { policyFromOptions, trust, writePolicyFile } from "../../cli/commands/trust/trust.ts";
import { installedPaths, pathsFrom } from "../../cli/elevation/paths.ts";
import { CliError } from "../../cli/errors.ts";
import { show, type TrustDeps } from "../../cli/trust/policy-view.ts";
import { parsePolicy } from "../../verifier/policy.ts";
import { fakeContext, runInProcess } from "../helpers/fake-context.ts";

const dir = mkdtempSync(join(tmpdir(), "apes-trust-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const BASE = {
  idp: ["https://id.example.com"],
  approvers: ["alice@example.com", "bob@example.com"],
  map: ["deploy=agent@example.com,agent2@example.com", "ops=ops@example.com"],
};

function deps(uid: number, file: string): TrustDeps {
  return {
    getuid: () => uid,
    paths: () => ({
      ...pathsFrom({ prefix: "/p", sysconfdir: dir, localstatedir: dir }, "test"),
      configFile: file,
    }),
    hostname: () => "web1",
    nowS: () => 1_800_000_000,
  };
}

async function failure(p: Promise<unknown>): Promise<CliError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CliError);
    return e as CliError;
  }
  throw new Error("expected a CliError");
}

describe("apes [run] -- cmd routing in the CLI", () => {
  it("says the executable alone cannot elevate (78) and how to install the shim", async () => {
    const r = await runInProcess(["--reason", "deploy", "--", "systemctl", "restart", "nginx"]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("cannot elevate");
    expect(r.stderr).toContain("sudo make install");
  });
  it("`apes run -- cmd` is the same", async () => {
    expect((await runInProcess(["run", "--", "id"])).code).toBe(78);
  });
  it("never takes the command after -- for a subcommand", async () => {
    const r = await runInProcess(["--", "grants", "list"]);
    expect(r.code).toBe(78);
  });
  it("a missing -- is a usage error that says so", async () => {
    const r = await runInProcess(["--reason", "r", "ls", "-la"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("put -- before the command");
  });
  it("bad option values are usage errors", async () => {
    expect((await runInProcess(["--approval", "timed", "--", "id"])).stderr).toContain("needs --duration");
    expect((await runInProcess(["--as", "a b", "--", "id"])).code).toBe(2);
  });
  it("hides the shim's internal commands from help", async () => {
    const r = await runInProcess(["--help"]);
    expect(r.stdout).toContain("run");
    expect(r.stdout).toContain("trust");
    expect(r.stdout).not.toContain("__request");
    expect(r.stdout).not.toContain("__verify");
  });
  it("__request refuses a result fd that is not an inherited pipe", async () => {
    const r = await runInProcess(["__request", "--result-fd", "1", "--", "id"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("not an inherited pipe");
  });
});

describe("apes trust", () => {
  it("refuses to run unless the real uid is 0", async () => {
    const file = join(dir, "never.toml");
    const e = await failure(trust(fakeContext(), { ...BASE, skipValidation: true }, deps(1000, file)));
    expect(e.exitCode).toBe(77);
    expect(e.hint).toContain("sudo");
    expect(() => statSync(file)).toThrow();
  });

  it("writes a policy the verifier parses back, 0600, and prints a summary", async () => {
    const file = join(dir, "apes", "config.toml");
    const ctx = fakeContext();
    await trust(ctx, { ...BASE, runAs: ["root", "nobody"], skipValidation: true }, deps(0, file));
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const p = parsePolicy(readFileSync(file, "utf8"), file, { hostname: "other" });
    expect(p).toMatchObject({
      issuers: ["https://id.example.com"],
      approvers: ["alice@example.com", "bob@example.com"],
      host: "web1",
      runAs: ["root", "nobody"],
      users: { deploy: ["agent@example.com", "agent2@example.com"], ops: ["ops@example.com"] },
    });
    expect(ctx.stdout.text).toContain(`wrote ${file}`);
    const shown = fakeContext({ globals: { json: true } });
    await show(shown, deps(0, file));
    expect(JSON.parse(shown.stdout.text)).toMatchObject({
      path: file,
      insecure: null,
      policy: { host: "web1" },
    });
  });

  it("copies --ca-file into the policy and validates the options", async () => {
    const ca = join(dir, "ca.pem");
    writeFileSync(ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    const { policy } = await policyFromOptions({ ...BASE, caFile: ca }, "web1");
    expect(policy.caPem).toContain("MIIB");
    for (const idp of ["http://id.example.com", "http://127.0.0.1:9", "http://127.0.0.1:80"])
      await expect(policyFromOptions({ ...BASE, idp: [idp] }, "h")).rejects.toThrow(/plain http/);
    await expect(policyFromOptions({ ...BASE, map: ["deploy"] }, "h")).rejects.toThrow(/user=identity/);
    await expect(policyFromOptions({ ...BASE, approvers: [] }, "h")).rejects.toThrow(
      /--approvers is required/,
    );
    await expect(policyFromOptions({ ...BASE, caFile: join(dir, "missing.pem") }, "h")).rejects.toThrow(
      /cannot read/,
    );
  });

  it("fails with 69 when the IdP cannot be validated", async () => {
    const file = join(dir, "unvalidated.toml");
    const e = await failure(trust(fakeContext(), { ...BASE, idp: ["https://127.0.0.1:1"] }, deps(0, file)));
    expect(e.exitCode).toBe(69);
    expect(e.hint).toContain("--skip-validation");
    expect(() => statSync(file)).toThrow();
  });

  it("--show flags an insecure policy file", async () => {
    const file = join(dir, "loose.toml");
    await writePolicyFile(file, readFileSync(join(dir, "apes", "config.toml"), "utf8"));
    chmodSync(file, 0o666);
    const ctx = fakeContext();
    const e = await failure(show(ctx, deps(0, file)));
    expect(e.exitCode).toBe(78);
    expect(ctx.stdout.text).toContain("INSECURE");
  });
});

describe("installedPaths", () => {
  it("falls back to the defaults without a trustworthy paths.json", () => {
    const p = installedPaths(join(dir, "nowhere", "apes"));
    expect(p).toMatchObject({
      configFile: "/etc/apes/config.toml",
      auditLog: "/var/log/apes/audit.log",
      source: "defaults",
    });
  });
  it("reads paths.json next to the executable when root-owned and not writable by others", () => {
    const exec = join(dir, "libexec", "apes");
    mkdirSync(join(dir, "libexec"), { recursive: true });
    writeFileSync(
      join(dir, "libexec", "paths.json"),
      JSON.stringify({ prefix: "/opt/a", sysconfdir: "/opt/a/etc", localstatedir: "/opt/a/var" }),
    );
    // Owned by whoever runs the test: trusted when that is the owner asked for, whatever the uid.
    const me = process.getuid!();
    const p = installedPaths(exec, me);
    expect(p.configFile).toBe("/opt/a/etc/apes/config.toml");
    expect(p.auditLog).toBe("/opt/a/var/log/apes/audit.log");
    expect(p.source).toBe(join(dir, "libexec", "paths.json"));
    expect(installedPaths(exec, me + 1).source).toBe("defaults"); // owned by someone else
    chmodSync(join(dir, "libexec", "paths.json"), 0o666);
    expect(installedPaths(exec, me).source).toBe("defaults"); // writable by others
  });
});
