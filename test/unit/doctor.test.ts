import { describe, expect, it } from "vitest";
import { doctor } from "../../cli/commands/doctor/doctor.ts";
import {
  type CheckResult,
  type DoctorEnv,
  decideAuditLog,
  decideClock,
  decideDirectories,
  decideDns,
  decideExec,
  decideKey,
  decidePolicyFile,
  decideResidentVerifier,
  decideSessionFile,
  decideShim,
  decideToken,
  decideVerifierUser,
  type FileInfo,
  type HttpAnswer,
  runDoctor,
  untrustedParent,
} from "../../cli/doctor/checks.ts";
import { pathsFrom } from "../../cli/elevation/paths.ts";
import { CliError } from "../../cli/errors.ts";
import type { StoredSession } from "../../client/session-store.ts";
import { fakeContext } from "../helpers/fake-context.ts";

const file = (mode: number, uid = 0): FileInfo => ({
  uid,
  gid: 0,
  mode: 0o100000 | mode,
  isFile: true,
  isDirectory: false,
  isSymbolicLink: false,
});
const dir = (mode: number, uid = 0): FileInfo => ({ ...file(mode, uid), isFile: false, isDirectory: true });
const link: FileInfo = { ...file(0o777), isFile: false, isSymbolicLink: true };

const NOW_MS = Date.UTC(2026, 11, 1, 12, 0, 0);
const ISSUER = "https://id.example.com";
const PATHS = pathsFrom({ prefix: "/p/usr", sysconfdir: "/p/etc", localstatedir: "/p/var" }, "/p/paths.json");
const SESSION: StoredSession = {
  version: 1,
  idp: ISSUER,
  email: "alice@example.com",
  act: "human",
  token: "t",
  expires_at: NOW_MS / 1000 + 600,
  key_path: "/h/alice/.config/apes/id_ed25519",
  key_fingerprint: "SHA256:good",
};
const POLICY = `issuers = ["${ISSUER}"]\napprovers = ["alice@example.com"]\n[users]\ndeploy = ["bot@example.com"]\n`;

const statusOf = (results: CheckResult[], check: string) => results.filter((r) => r.check === check);

describe("doctor: the installation", () => {
  it("shim: ok only when root-owned, setuid and not writable; each failure names its fix", () => {
    expect(decideShim("/s", file(0o4755), true).status).toBe("ok");
    const notSetuid = decideShim("/s", file(0o755), true);
    expect(notSetuid).toMatchObject({ status: "fail", fix: "sudo chmod 4755 /s" });
    expect(notSetuid.detail).toContain("not setuid (mode 0755)");
    expect(decideShim("/s", file(0o4755, 1000), true)).toMatchObject({
      status: "fail",
      fix: "sudo chown root:root /s",
    });
    expect(decideShim("/s", file(0o4777), true)).toMatchObject({ status: "fail", fix: "sudo chmod 4755 /s" });
    expect(decideShim("/s", link, true).status).toBe("fail");
    expect(decideShim("/s", undefined, true).status).toBe("fail");
    // Not installed at all (dist/apes run from the tree): elevation is simply unavailable.
    expect(decideShim("/s", undefined, false).status).toBe("warn");
  });

  it("executable: the shim's own rule, for the file and its directory", () => {
    expect(decideExec("/d/apes", file(0o755), "/d", dir(0o755)).status).toBe("ok");
    expect(decideExec("/d/apes", file(0o775), "/d", dir(0o755))).toMatchObject({
      status: "fail",
      fix: "sudo chmod go-w /d/apes",
    });
    expect(decideExec("/d/apes", file(0o755), "/d", dir(0o757))).toMatchObject({
      status: "fail",
      fix: "sudo chmod go-w /d",
    });
    expect(decideExec("/d/apes", file(0o755, 1000), "/d", dir(0o755))).toMatchObject({
      status: "fail",
      fix: "sudo chown root:root /d/apes",
    });
    expect(decideExec("/d/apes", file(0o644), "/d", dir(0o755)).status).toBe("fail");
    expect(decideExec("/d/apes", undefined, "/d", dir(0o755)).status).toBe("fail");
    expect(decideExec("/d/apes", link, "/d", dir(0o755)).status).toBe("fail");
  });

  it("verifier user and its cache directory", () => {
    const [missing] = decideVerifierUser(undefined, "/c", undefined);
    expect(missing).toMatchObject({ check: "verifier-user", status: "fail" });
    expect(missing!.fix).toContain("useradd --system");
    const okay = decideVerifierUser({ uid: 990, gid: 990 }, "/c", dir(0o700, 990));
    expect(okay.map((r) => r.status)).toEqual(["ok", "ok"]);
    expect(decideVerifierUser({ uid: 990, gid: 990 }, "/c", dir(0o755, 990))[1]!.status).toBe("warn");
    expect(decideVerifierUser({ uid: 990, gid: 990 }, "/c", dir(0o700, 0))[1]!.status).toBe("warn");
    expect(decideVerifierUser({ uid: 990, gid: 990 }, "/c", undefined)[1]!.status).toBe("warn");
  });

  it("the resident verifier: absent is fine, a socket of _apes is used, anything else is ignored and said", () => {
    const sock = "/c/verifier.sock";
    expect(decideResidentVerifier(sock, undefined, 990)).toMatchObject({ status: "ok" });
    expect(decideResidentVerifier(sock, undefined, 990).detail).toContain(
      "systemctl enable --now apes-verifier",
    );
    const socket = { ...file(0o755, 990), isFile: false, isSocket: true };
    expect(decideResidentVerifier(sock, socket, 990)).toMatchObject({ status: "ok" });
    expect(decideResidentVerifier(sock, { ...socket, uid: 0 }, 990)).toMatchObject({
      status: "warn",
      fix: `sudo rm ${sock}`,
    });
    expect(decideResidentVerifier(sock, file(0o600, 990), 990).status).toBe("warn");
  });

  it("audit log: a root-only directory, a root-owned file", () => {
    const d = "/v/log/apes";
    const f = `${d}/audit.log`;
    expect(decideAuditLog(d, dir(0o700), f, file(0o600), true).status).toBe("ok");
    expect(decideAuditLog(d, dir(0o700), f, undefined, true).status).toBe("ok");
    expect(decideAuditLog(d, dir(0o700), f, undefined, false).detail).toContain("sudo apes doctor");
    expect(decideAuditLog(d, undefined, f, undefined, true)).toMatchObject({
      status: "fail",
      fix: `sudo install -d -m 0700 -o root -g root ${d}`,
    });
    expect(decideAuditLog(d, dir(0o777), f, undefined, true).status).toBe("fail");
    expect(decideAuditLog(d, dir(0o700), f, file(0o600, 1000), true).status).toBe("fail");
    expect(decideAuditLog(d, dir(0o700), f, link, true).status).toBe("fail");
    expect(decideAuditLog(d, dir(0o700), f, file(0o644), true).status).toBe("warn");
    expect(decideAuditLog(d, dir(0o700), f, { ...file(0o600), nlink: 2 }, true).status).toBe("fail");
  });

  it("directories above the policy and the log: root's alone, sticky allowed", async () => {
    const env = fakeEnv({}, { "/p": dir(0o1777) });
    expect(
      decideDirectories([["/p/etc/apes/config.toml", await untrustedParent(env, "/p/etc/apes/config.toml")]])
        .status,
    ).toBe("ok");
    const writable = fakeEnv({}, { "/p/etc": dir(0o777) });
    const problem = await untrustedParent(writable, "/p/etc/apes/config.toml");
    expect(problem).toEqual({ dir: "/p/etc", problem: "is group- or world-writable (mode 777)" });
    expect(decideDirectories([["/p/etc/apes/config.toml", problem]])).toMatchObject({
      status: "fail",
      fix: "sudo chown root:root /p/etc && sudo chmod go-w /p/etc",
    });
    const log = "/p/var/log/apes/audit.log";
    const owned = await untrustedParent(fakeEnv({}, { "/p/var": dir(0o755, 1000) }), log);
    expect(owned).toEqual({ dir: "/p/var", problem: "is owned by uid 1000, not root" });
    expect(await untrustedParent(fakeEnv({}, { "/p/var": link }), log)).toEqual({
      dir: "/p/var",
      problem: "is a symbolic link",
    });
    const missing = await untrustedParent(fakeEnv({}, { "/p/var/log": undefined }), log);
    expect(missing).toEqual({ dir: "/p/var/log", problem: "is missing" });
    expect(decideDirectories([[log, missing]]).fix).toContain("make install");
  });

  it("policy file: root 0600 only", () => {
    expect(decidePolicyFile("/e/c", file(0o600)).status).toBe("ok");
    const readable = decidePolicyFile("/e/c", file(0o644));
    expect(readable).toMatchObject({
      status: "fail",
      fix: "sudo chown root:root /e/c && sudo chmod 600 /e/c",
    });
    expect(readable.detail).toContain("mode 0644");
    expect(decidePolicyFile("/e/c", file(0o620)).detail).toContain("the shim refuses it");
    expect(decidePolicyFile("/e/c", file(0o600, 1000)).detail).toContain("not root");
    expect(decidePolicyFile("/e/c", undefined).fix).toContain("sudo apes trust");
    expect(decidePolicyFile("/e/c", link).status).toBe("fail");
  });
});

describe("doctor: the IdP and the clock", () => {
  const answer = (date: string | undefined, receivedAtMs = NOW_MS): HttpAnswer => ({
    status: 200,
    body: {},
    date,
    receivedAtMs,
  });
  it("clock: ok within 30 s, warn up to 60 s, fail beyond (the tokens' leeway)", () => {
    const at = (skewS: number) => new Date(NOW_MS - skewS * 1000).toUTCString();
    expect(decideClock("https://i", answer(at(0))).status).toBe("ok");
    expect(decideClock("https://i", answer(at(-20))).status).toBe("ok");
    expect(decideClock("https://i", answer(at(45))).status).toBe("warn");
    const ahead = decideClock("https://i", answer(at(600)));
    expect(ahead.status).toBe("fail");
    expect(ahead.detail).toContain("600 s ahead of https://i");
    expect(ahead.fix).toContain("timedatectl set-ntp true");
    expect(decideClock("https://i", answer(at(-120))).detail).toContain("120 s behind");
  });
  it("clock: a missing or odd Date header is a warning, shown escaped", () => {
    expect(decideClock("https://i", answer(undefined)).status).toBe("warn");
    const odd = decideClock("https://i", answer("\u001b[31mnope"));
    expect(odd.status).toBe("warn");
    expect(odd.detail).toContain("\\x1b[31mnope");
    expect(odd.detail).not.toContain("\u001b");
  });
});

describe("doctor: the session", () => {
  it("session file: the user's own, 0600", () => {
    expect(decideSessionFile("/a", file(0o600, 1000), 1000).status).toBe("ok");
    expect(decideSessionFile("/a", file(0o644, 1000), 1000)).toMatchObject({
      status: "fail",
      fix: "chmod 600 /a",
    });
    expect(decideSessionFile("/a", file(0o600, 0), 1000).status).toBe("fail");
  });
  it("token: valid, expired but renewable from the key, expired for good", () => {
    const nowS = NOW_MS / 1000;
    expect(decideToken(SESSION, nowS)).toMatchObject({ status: "ok" });
    expect(decideToken(SESSION, nowS).detail).toContain("10 min left");
    expect(decideToken({ ...SESSION, expires_at: nowS - 1 }, nowS).status).toBe("ok");
    const gone = decideToken({ ...SESSION, key_path: undefined, expires_at: nowS - 1 }, nowS);
    expect(gone).toMatchObject({ status: "fail", fix: "apes login alice@example.com" });
  });
  it("key: present, the one logged in with, private", () => {
    expect(decideKey(SESSION, file(0o600, 1000), { fingerprint: "SHA256:good" }).status).toBe("ok");
    const other = decideKey(SESSION, file(0o600, 1000), { fingerprint: "SHA256:other" });
    expect(other.status).toBe("fail");
    expect(other.detail).toContain("not the key logged in with (SHA256:good)");
    expect(decideKey(SESSION, undefined, {}).detail).toContain("does not exist");
    expect(decideKey(SESSION, file(0o600, 1000), { error: "encrypted" }).status).toBe("fail");
    expect(decideKey(SESSION, file(0o644, 1000), { fingerprint: "SHA256:good" })).toMatchObject({
      status: "warn",
      fix: `chmod 600 ${SESSION.key_path}`,
    });
    expect(decideKey({ ...SESSION, key_path: undefined }, undefined, {}).status).toBe("ok");
  });
  it("dns: the record, its absence, deny, another IdP, DNS down; DNS text escaped", () => {
    const name = "_ddisa.example.com";
    const rec = (idp: string, mode = "open") => ({ name, selected: { idp, mode } });
    expect(decideDns(SESSION.email, ISSUER, rec(`${ISSUER}/`), undefined, undefined).status).toBe("ok");
    expect(decideDns(SESSION.email, ISSUER, rec(ISSUER, "deny"), undefined, undefined).status).toBe("fail");
    const other = decideDns(SESSION.email, ISSUER, rec("https://evil\u202e.example"), undefined, undefined);
    expect(other.status).toBe("warn");
    expect(other.detail).toContain("\\u202e");
    expect(decideDns(SESSION.email, ISSUER, { name }, undefined, undefined).status).toBe("warn");
    expect(decideDns(SESSION.email, ISSUER, { name }, undefined, undefined).fix).toContain(
      `TXT "v=ddisa1 idp=${ISSUER}`,
    );
    expect(decideDns(SESSION.email, ISSUER, undefined, "timeout", undefined).status).toBe("warn");
  });
});

/** A whole healthy machine; `over` breaks one thing. */
function fakeEnv(over: Partial<DoctorEnv> = {}, files: Record<string, FileInfo | undefined> = {}): DoctorEnv {
  const all: Record<string, FileInfo | undefined> = {
    "/p/usr/bin/apes": file(0o4755),
    "/p/usr/libexec/apes/apes": file(0o755),
    "/p/usr/libexec/apes": dir(0o755),
    "/p/var/cache/apes": dir(0o700, 990),
    "/p/etc/apes/config.toml": file(0o600),
    "/p/var/log/apes": dir(0o700),
    ...Object.fromEntries(
      ["/", "/p", "/p/etc", "/p/etc/apes", "/p/var", "/p/var/log"].map((d) => [d, dir(0o755)]),
    ),
    "/h/alice/.config/apes/auth.json": file(0o600, 0),
    [SESSION.key_path!]: file(0o600, 0),
    ...files,
  };
  const discovery = { issuer: ISSUER, jwks_uri: `${ISSUER}/jwks` };
  const jwks = { keys: [{ kty: "OKP", crv: "Ed25519", x: "x", kid: "k" }] };
  return {
    uid: 0,
    paths: PATHS,
    nowMs: () => NOW_MS,
    hostname: () => "web1",
    lstat: async (p) => all[p],
    readFile: async (p) => {
      if (p === "/p/etc/apes/config.toml") return POLICY;
      throw Object.assign(new Error(`ENOENT: ${p}`), { code: "ENOENT" });
    },
    pinnedCa: async (p) => p.caPem,
    lookupUser: async (n) => (n === "_apes" ? { uid: 990, gid: 990 } : undefined),
    get: async (url) => ({
      status: 200,
      body: url.endsWith("/jwks") ? jwks : discovery,
      date: new Date(NOW_MS).toUTCString(),
      receivedAtMs: NOW_MS,
    }),
    authFile: "/h/alice/.config/apes/auth.json",
    session: async () => SESSION,
    keyFingerprint: async () => "SHA256:good",
    configuredIdp: async () => undefined,
    ddisa: async () => ({ name: "_ddisa.example.com", selected: { idp: ISSUER, mode: "open" } }),
    ...over,
  };
}

describe("doctor: the whole run with fakes", () => {
  it("a healthy machine: every check ok, in order, exit 0", async () => {
    const results = await runDoctor(fakeEnv());
    expect(results.map((r) => [r.check, r.status])).toEqual([
      ["shim", "ok"],
      ["executable", "ok"],
      ["verifier-user", "ok"],
      ["cache-dir", "ok"],
      ["verifier-svc", "ok"],
      ["directories", "ok"],
      ["audit-log", "ok"],
      ["policy-file", "ok"],
      ["policy", "ok"],
      ["idp", "ok"],
      ["jwks", "ok"],
      ["clock", "ok"],
      ["session-file", "ok"],
      ["session", "ok"],
      ["key", "ok"],
      ["token", "ok"],
      ["dns", "ok"],
    ]);
    const ctx = fakeContext();
    await doctor(ctx, fakeEnv());
    expect(ctx.stdout.text).toMatch(/^ok {4}shim {11}\/p\/usr\/bin\/apes: setuid root, mode 4755$/m);
  });

  it("as a user: the root-only policy is a warning that says to use sudo, not a failure", async () => {
    const eacces = async (p: string) => {
      throw Object.assign(new Error(`EACCES: permission denied, open '${p}'`), { code: "EACCES" });
    };
    const results = await runDoctor(
      fakeEnv({ uid: 1000, readFile: eacces }, { "/h/alice/.config/apes/auth.json": file(0o600, 1000) }),
    );
    expect(statusOf(results, "policy")).toEqual([
      expect.objectContaining({ status: "warn", fix: "sudo apes doctor" }),
    ]);
    // The session's IdP is still checked, with the user's TLS settings.
    expect(statusOf(results, "jwks")[0]!.status).toBe("ok");
    expect(results.some((r) => r.status === "fail")).toBe(false);
  });

  it("a policy that does not parse fails with the parser's message, escaped", async () => {
    const results = await runDoctor(fakeEnv({ readFile: async () => 'issuers = ["x"]\nbogus\u001b = 1\n' }));
    const [policy] = statusOf(results, "policy");
    expect(policy!.status).toBe("fail");
    expect(policy!.detail).not.toContain("\u001b");
  });

  it("an unreachable IdP fails with the reason; a wrong issuer fails jwks; the exit status is 1", async () => {
    const down = fakeEnv({
      get: async () => {
        throw new Error("IdP at https://id.example.com is unreachable (connection refused)");
      },
    });
    const results = await runDoctor(down);
    const idp = statusOf(results, "idp");
    expect(idp[0]).toMatchObject({ status: "fail" });
    expect(idp[0]!.detail).toContain("connection refused");
    expect(statusOf(results, "jwks")).toEqual([]);
    const ctx = fakeContext();
    await expect(doctor(ctx, down)).rejects.toBeInstanceOf(CliError);
    expect(ctx.stdout.text).toContain("fix: start the IdP");

    const liar = fakeEnv({
      get: async () => ({
        status: 200,
        body: { issuer: "https://evil.example", jwks_uri: "x" },
        receivedAtMs: NOW_MS,
      }),
    });
    const jwks = statusOf(await runDoctor(liar), "jwks");
    expect(jwks[0]!.status).toBe("fail");
    expect(jwks[0]!.detail).toContain("names issuer https://evil.example");
  });

  it("a pinned CA in the policy is what the IdP requests trust", async () => {
    const seen: unknown[] = [];
    const env = fakeEnv({
      readFile: async () =>
        `${POLICY.replace("[users]", "ca_pem = '''-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----'''\n[users]")}`,
    });
    const get = env.get;
    env.get = async (url, trust) => {
      seen.push(trust);
      return get(url, trust);
    };
    await runDoctor(env);
    expect(seen.length).toBeGreaterThan(0);
    expect(
      seen.every((t) => typeof t === "object" && (t as { pinnedCa: string }).pinnedCa.includes("BEGIN")),
    ).toBe(true);
  });

  it("an IdP named in auth.json is shown escaped", async () => {
    const results = await runDoctor(
      fakeEnv({
        session: async () => ({ ...SESSION, idp: "https://id.example.com/\u001b[2J" }),
        get: async () => {
          throw new Error("refused");
        },
      }),
    );
    const shown = results.map((r) => r.detail).join("\n");
    expect(shown).toContain("\\x1b[2J");
    expect(shown).not.toContain("\u001b");
  });

  it("a ca_file the verifier would refuse fails the policy check with the verifier's reason", async () => {
    const results = await runDoctor(
      fakeEnv({
        pinnedCa: async () => {
          throw new Error("ca_file /tmp/ca.pem is in /tmp/x, which is group- or world-writable (mode 777)");
        },
      }),
    );
    expect(statusOf(results, "policy")[0]).toMatchObject({ status: "fail" });
    expect(statusOf(results, "policy")[0]!.detail).toContain("world-writable");
    // Only the session's IdP is checked then, with the user's TLS settings.
    expect(statusOf(results, "idp").map((r) => r.detail)).toEqual([`${ISSUER} answers`]);
  });

  it("not logged in: one warning, no key/token/dns checks", async () => {
    const results = await runDoctor(fakeEnv({}, { "/h/alice/.config/apes/auth.json": undefined }));
    expect(statusOf(results, "session")[0]).toMatchObject({ status: "warn", fix: "apes login EMAIL" });
    expect(statusOf(results, "token")).toEqual([]);
  });

  it("a broken auth.json fails with the store's message", async () => {
    const results = await runDoctor(
      fakeEnv({
        session: async () => {
          throw new Error("auth.json is broken: not valid JSON");
        },
      }),
    );
    expect(statusOf(results, "session")[0]).toMatchObject({ status: "fail" });
  });
});
