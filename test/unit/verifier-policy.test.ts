import { describe, expect, it } from "vitest";
import {
  normalizeIssuer,
  type Policy,
  PolicyError,
  parsePolicy,
  policyFileProblem,
  serializePolicy,
  trustedDirectoryProblem,
} from "../../verifier/policy.ts";

const HOST = { hostname: "web1" };
const MINIMAL = `
issuers = ["https://id.example.com/"]
approvers = ["alice@example.com"]
[users]
deploy = ["agent@example.com"]
`;

function parse(text: string): Policy {
  return parsePolicy(text, "/etc/apes/config.toml", HOST);
}

function error(text: string): string {
  try {
    parse(text);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return (e as Error).message;
  }
  throw new Error("expected a PolicyError");
}

describe("parsePolicy", () => {
  it("fills the documented defaults", () => {
    expect(parse(MINIMAL)).toEqual({
      version: 1,
      issuers: ["https://id.example.com"],
      approvers: ["alice@example.com"],
      audiences: ["escapes"],
      host: "web1",
      runAs: ["root"],
      allowSelfApproval: false,
      users: { deploy: ["agent@example.com"] },
    });
  });

  it("reads every key", () => {
    const p = parse(`
version = 1
issuers = ["https://id.example.com"]
approvers = ["alice@example.com", "bob@example.com"]
audiences = ["escapes", "ops"]
host = "db1.internal"
run_as = ["root", "nobody"]
allow_self_approval = true
allow_loopback_http = false
ca_file = "/etc/apes/ca.pem"
ca_pem = '''
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
'''
[users]
deploy = ["agent@example.com", "agent2@example.com"]
ops = ["ops@example.com"]
`);
    expect(p).toMatchObject({
      audiences: ["escapes", "ops"],
      host: "db1.internal",
      runAs: ["root", "nobody"],
      allowSelfApproval: true,
      caFile: "/etc/apes/ca.pem",
      users: { deploy: ["agent@example.com", "agent2@example.com"], ops: ["ops@example.com"] },
    });
    expect(p.caPem).toContain("BEGIN CERTIFICATE");
  });

  it("rejects unknown keys, naming them", () => {
    expect(error(`${MINIMAL.replace("[users]", 'approver = ["x"]\n[users]')}`)).toContain(
      'unknown key "approver"',
    );
  });

  it("rejects missing required keys", () => {
    expect(error('approvers = ["a@b"]\n[users]\nx = ["a@b"]')).toContain('"issuers" must be present');
    expect(error('issuers = ["https://a"]\n[users]\nx = ["a@b"]')).toContain('"approvers" must be present');
    expect(error('issuers = ["https://a"]\napprovers = ["a@b"]')).toContain("missing [users]");
  });

  it("rejects bad types", () => {
    expect(
      error(MINIMAL.replace('issuers = ["https://id.example.com/"]', 'issuers = "https://id.example.com"')),
    ).toContain('"issuers" must be a list');
    expect(error(`allow_self_approval = "yes"\n${MINIMAL}`)).toContain(
      '"allow_self_approval" must be true or false',
    );
    expect(error(`host = 5\n${MINIMAL}`)).toContain('"host" must be a host name');
    expect(error(`version = 2\n${MINIMAL}`)).toContain('"version" must be 1');
    expect(error(`ca_pem = "not a pem"\n${MINIMAL}`)).toContain('"ca_pem"');
    expect(error(`ca_file = "relative.pem"\n${MINIMAL}`)).toContain('"ca_file" must be an absolute path');
    expect(
      error(MINIMAL.replace('deploy = ["agent@example.com"]', 'deploy = "agent@example.com"')),
    ).toContain('"users.deploy"');
    expect(error(MINIMAL.replace('deploy = ["agent@example.com"]', "deploy = []"))).toContain(
      '"users.deploy"',
    );
    expect(error(MINIMAL.replace("deploy =", '"bad user" ='))).toContain("Unix user name");
    expect(error(`run_as = ["root", "a b"]\n${MINIMAL}`)).toContain('"run_as"');
    expect(error(`approvers = ["a b"]\n${MINIMAL.replace(/approvers.*\n/, "")}`)).toContain('"approvers"');
  });

  it("rejects an empty identity map and empty required lists", () => {
    expect(error('issuers = ["https://a.example"]\napprovers = ["a@b"]\n[users]\n')).toContain(
      "at least one",
    );
    expect(error(MINIMAL.replace('approvers = ["alice@example.com"]', "approvers = []"))).toContain(
      "non-empty",
    );
  });

  it("rejects invalid TOML with the file name", () => {
    expect(error("issuers = [")).toContain("/etc/apes/config.toml: not valid TOML");
  });

  it("requires https issuers: plain http is refused, on loopback too, with or without the old opt-in", () => {
    expect(error(MINIMAL.replace("https://id.example.com/", "http://id.example.com"))).toContain(
      "plain http",
    );
    for (const issuer of [
      "http://127.0.0.1:8080",
      "http://127.0.0.1:80",
      "http://[::1]:8080",
      "http://localhost",
    ])
      expect(error(MINIMAL.replace("https://id.example.com/", issuer))).toContain("plain http");
    // Policies written by an older `apes trust` say `allow_loopback_http = false`: still accepted.
    expect(parse(`allow_loopback_http = false\n${MINIMAL}`).issuers).toEqual(["https://id.example.com"]);
    expect(error(`allow_loopback_http = true\n${MINIMAL}`)).toContain('"allow_loopback_http" must be false');
    expect(
      error(
        `allow_loopback_http = true\n${MINIMAL.replace("https://id.example.com/", "http://127.0.0.1:8080")}`,
      ),
    ).toContain("allow_loopback_http");
    expect(error(MINIMAL.replace("https://id.example.com/", "ftp://id.example.com"))).toContain("https");
    expect(error(MINIMAL.replace("https://id.example.com/", "https://u:p@id.example.com"))).toContain(
      "credentials",
    );
  });

  it("round-trips through serializePolicy", () => {
    const p = parse(`
issuers = ["https://id.example.com"]
approvers = ["alice@example.com"]
run_as = ["root", "nobody"]
ca_pem = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n"
[users]
deploy = ["agent@example.com"]
"svc.backup" = ["backup@example.com"]
`);
    const text = serializePolicy(p, "written by apes trust");
    expect(text.startsWith("# written by apes trust\n")).toBe(true);
    expect(parse(text)).toEqual(p);
  });
});

describe("policy helpers", () => {
  it("normalises issuers without their trailing slash", () => {
    expect(normalizeIssuer("https://id.example.com/")).toBe("https://id.example.com");
    expect(normalizeIssuer("https://id.example.com/tenant/")).toBe("https://id.example.com/tenant");
    expect(normalizeIssuer("https://id.example.com/?x=1")).toEqual({ error: "a query or fragment" });
  });
  it("rejects a policy file that is not root-owned or is group/world-writable", () => {
    expect(policyFileProblem({ uid: 0, mode: 0o100600, isFile: true })).toBeUndefined();
    expect(policyFileProblem({ uid: 0, mode: 0o100644, isFile: true })).toBeUndefined();
    expect(policyFileProblem({ uid: 1000, mode: 0o100600, isFile: true })).toContain("not root");
    expect(policyFileProblem({ uid: 0, mode: 0o100620, isFile: true })).toContain("writable");
    expect(policyFileProblem({ uid: 0, mode: 0o100602, isFile: true })).toContain("writable");
    expect(policyFileProblem({ uid: 0, mode: 0o100600, isFile: false })).toContain("regular file");
  });
  it("trusts a directory above a ca_file only when no one but root can change it", () => {
    const dir = (uid: number, mode: number, isDirectory = true) => ({
      uid,
      mode: 0o40000 | mode,
      isDirectory,
    });
    expect(trustedDirectoryProblem(dir(0, 0o755))).toBeUndefined();
    expect(trustedDirectoryProblem(dir(0, 0o1777))).toBeUndefined(); // /tmp: sticky, root's entries stay
    expect(trustedDirectoryProblem(dir(1000, 0o755))).toContain("not root");
    expect(trustedDirectoryProblem(dir(1000, 0o1777))).toContain("not root");
    expect(trustedDirectoryProblem(dir(0, 0o775))).toContain("writable");
    expect(trustedDirectoryProblem(dir(0, 0o757))).toContain("writable");
    expect(trustedDirectoryProblem(dir(0, 0o755, false))).toContain("not a directory");
  });
});
