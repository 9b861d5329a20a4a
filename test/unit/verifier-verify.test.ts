import { execFileSync } from "node:child_process";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { exportJWK, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import type { HttpFn } from "../../verifier/verify.ts";
import { readLine, runVerifier } from "../../verifier/verify.ts";

// The verifier's effects with a fake network: real Ed25519 keys, real JWTs (jose), a real policy fd.
const ISS = "https://id.example.com";
const AGENT = "agent@example.com";
const HUMAN = "alice@example.com";
const NOW = Math.floor(Date.now() / 1000);
const ARGV = ["id", "-u"];

let dir: string;
let idpKey: { privateKey: KeyObject; publicKey: KeyObject };
let foreignKey: { privateKey: KeyObject; publicKey: KeyObject };
let jwk: Record<string, unknown>;

const POLICY = `
issuers = ["${ISS}"]
approvers = ["${HUMAN}"]
host = "web1"
run_as = ["root", "nobody"]
[users]
deploy = ["${AGENT}"]
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-verifier-"));
  idpKey = generateKeyPairSync("ed25519");
  foreignKey = generateKeyPairSync("ed25519");
  jwk = { ...(await exportJWK(idpKey.publicKey)), kid: "k1", alg: "EdDSA", use: "sig" };
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function token(over: Record<string, unknown> = {}, key: KeyObject = idpKey.privateKey, kid = "k1") {
  const claims = {
    iss: ISS,
    sub: AGENT,
    aud: "escapes",
    target_host: "web1",
    jti: crypto.randomUUID(),
    grant_id: "6f1c2b3a-0000-4000-8000-000000000001",
    grant_type: "once",
    approval: "once",
    command: ARGV,
    cmd_hash: cmdHash(ARGV),
    run_as: "root",
    decided_by: HUMAN,
    iat: NOW,
    exp: NOW + 300,
    ...over,
  };
  return new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid }).sign(key);
}

interface FakeIdp {
  http: HttpFn;
  calls: string[];
  consume: { status: number; body: unknown } | Error;
  discovery: Record<string, unknown>;
  keys: () => unknown[];
}

function fakeIdp(): FakeIdp {
  const f: FakeIdp = {
    calls: [],
    consume: { status: 200, body: { status: "consumed" } },
    discovery: {
      issuer: ISS,
      jwks_uri: `${ISS}/.well-known/jwks.json`,
      openape_grants_endpoint: `${ISS}/api/grants`,
    },
    keys: () => [jwk],
    http: async (url, init) => {
      f.calls.push(`${init.method} ${url}`);
      if (url === `${ISS}/.well-known/openid-configuration`) return { status: 200, body: f.discovery };
      if (url === f.discovery.jwks_uri) return { status: 200, body: { keys: f.keys() } };
      if (url.endsWith("/consume")) {
        if (f.consume instanceof Error) throw f.consume;
        expect(init.headers?.authorization).toMatch(/^Bearer ey/);
        return f.consume;
      }
      return { status: 404, body: {} };
    },
  };
  return f;
}

/** A PEM-shaped CA (the fake network ignores TLS; the verifier only fingerprints it). */
const pem = (body: string) => `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----`;

let n = 0;
async function verify(
  jwt: string,
  idp: FakeIdp,
  options: { policy?: string; mode?: number; req?: Record<string, unknown>; cacheDir?: string } = {},
) {
  const file = join(dir, `policy-${n++}.toml`);
  writeFileSync(file, options.policy ?? POLICY, { mode: 0o600 });
  if (options.mode !== undefined) chmodSync(file, options.mode);
  const fd = openSync(file, "r");
  const line = JSON.stringify({
    jwt,
    argv: ARGV,
    cmd_hash: cmdHash(ARGV),
    user: "deploy",
    uid: 1001,
    run_as: "root",
    ...options.req,
  });
  let stdout = "";
  let stderr = "";
  try {
    const r = await runVerifier(
      {
        stdin: Readable.from([`${line}\n`]),
        stdout: { write: (s: string) => (stdout += s) },
        stderr: { write: (s: string) => (stderr += s) },
      },
      { configFd: fd, http: idp.http, cacheDir: options.cacheDir, policyOwnerUid: process.getuid?.() ?? 0 },
    );
    return { ...r, verdict: JSON.parse(stdout) as Record<string, unknown>, stdout, stderr };
  } finally {
    closeSync(fd);
  }
}

describe("runVerifier", () => {
  it("allows a valid grant, consumes it, and prints one flat verdict line", async () => {
    const idp = fakeIdp();
    const r = await verify(await token(), idp);
    expect(r.exit).toBe(0);
    expect(r.stdout.endsWith("\n")).toBe(true);
    expect(r.stdout.trim().split("\n")).toHaveLength(1);
    expect(r.verdict).toMatchObject({
      ok: true,
      cmd_hash: cmdHash(ARGV),
      run_as: "root",
      sub: AGENT,
      decided_by: HUMAN,
      issuer: ISS,
    });
    for (const v of Object.values(r.verdict)) expect(["string", "boolean"]).toContain(typeof v);
    expect(idp.calls.at(-1)).toBe(`POST ${ISS}/api/grants/6f1c2b3a-0000-4000-8000-000000000001/consume`);
  });

  it("denies an issuer outside the policy without any network call", async () => {
    const idp = fakeIdp();
    const r = await verify(await token({ iss: "https://evil.example.com" }), idp);
    expect(r.verdict).toMatchObject({ ok: false, reason: "issuer_not_allowed" });
    expect(r.exit).toBe(77);
    expect(idp.calls).toEqual([]);
  });

  it("denies a token signed by a foreign key under the IdP's kid (signature_invalid)", async () => {
    const r = await verify(await token({}, foreignKey.privateKey, "k1"), fakeIdp());
    expect(r.verdict).toMatchObject({ ok: false, reason: "signature_invalid" });
  });

  it("denies a token with an unknown kid after one refetch", async () => {
    const idp = fakeIdp();
    const r = await verify(await token({}, foreignKey.privateKey, "other"), idp);
    expect(r.verdict).toMatchObject({ ok: false, reason: "signature_invalid" });
    expect(r.verdict.detail).toContain("other");
  });

  it("pins alg to EdDSA: an HS256 token is refused before its signature is looked at", async () => {
    const hs = await new SignJWT({ iss: ISS })
      .setProtectedHeader({ alg: "HS256", kid: "k1" })
      .sign(new Uint8Array(32));
    const r = await verify(hs, fakeIdp());
    expect(r.verdict).toMatchObject({ ok: false, reason: "signature_invalid" });
    expect(r.verdict.detail).toContain("HS256");
  });

  it("denies a tampered payload", async () => {
    const [h, , s] = (await token()).split(".");
    const payload = Buffer.from(
      JSON.stringify({ iss: ISS, sub: AGENT, command: ["rm", "-rf", "/"] }),
    ).toString("base64url");
    const r = await verify(`${h}.${payload}.${s}`, fakeIdp());
    expect(r.verdict).toMatchObject({ ok: false, reason: "signature_invalid" });
  });

  it("reports a token that is not a JWT as token_malformed", async () => {
    expect((await verify("not-a-jwt", fakeIdp())).verdict).toMatchObject({ reason: "token_malformed" });
  });

  it("refuses a jwks_uri on another origin (jwks_unavailable, exit 69)", async () => {
    const idp = fakeIdp();
    idp.discovery.jwks_uri = "https://keys.evil.example.com/jwks.json";
    const r = await verify(await token(), idp);
    expect(r.verdict).toMatchObject({ ok: false, reason: "jwks_unavailable" });
    expect(r.verdict.detail).toContain("origin");
    expect(r.exit).toBe(69);
  });

  it("refuses a discovery document naming another issuer", async () => {
    const idp = fakeIdp();
    idp.discovery.issuer = "https://other.example.com";
    expect((await verify(await token(), idp)).verdict).toMatchObject({ reason: "jwks_unavailable" });
  });

  it("refuses a grants endpoint on another origin (the token would leak there)", async () => {
    const idp = fakeIdp();
    idp.discovery.openape_grants_endpoint = "https://collector.example.com/api/grants";
    expect((await verify(await token(), idp)).verdict).toMatchObject({ reason: "jwks_unavailable" });
  });

  it("fails closed when the IdP is unreachable at consume (idp_unreachable, exit 69)", async () => {
    const idp = fakeIdp();
    idp.consume = new Error("connection refused");
    const r = await verify(await token(), idp);
    expect(r.verdict).toMatchObject({ ok: false, reason: "idp_unreachable" });
    expect(r.exit).toBe(69);
  });

  it("fails closed on a 5xx from consume", async () => {
    const idp = fakeIdp();
    idp.consume = { status: 503, body: {} };
    expect((await verify(await token(), idp)).exit).toBe(69);
  });

  it("denies a replayed once grant (grant_not_usable already_consumed)", async () => {
    const idp = fakeIdp();
    idp.consume = { status: 409, body: { error: "already_consumed", status: "used" } };
    const r = await verify(await token(), idp);
    expect(r.verdict).toMatchObject({ ok: false, reason: "grant_not_usable" });
    expect(r.verdict.detail).toContain("already_consumed");
  });

  it("does not consume when a claim check fails", async () => {
    const idp = fakeIdp();
    const r = await verify(await token({ target_host: "web2" }), idp);
    expect(r.verdict).toMatchObject({ reason: "host_mismatch" });
    expect(idp.calls.some((c) => c.endsWith("/consume"))).toBe(false);
  });

  it("denies config_invalid (exit 78) for a group-writable policy", async () => {
    const r = await verify(await token(), fakeIdp(), { mode: 0o620 });
    expect(r.verdict).toMatchObject({ ok: false, reason: "config_invalid" });
    expect(r.exit).toBe(78);
  });

  it("denies config_invalid for a policy with an unknown key", async () => {
    const r = await verify(await token(), fakeIdp(), { policy: `${POLICY}\nextra = 1\n` });
    expect(r.verdict).toMatchObject({ reason: "config_invalid" });
  });

  it("denies request_invalid when the shim's hash is not the hash of argv", async () => {
    const r = await verify(await token(), fakeIdp(), { req: { cmd_hash: cmdHash(["id"]) } });
    expect(r.verdict).toMatchObject({ reason: "request_invalid" });
    expect(r.exit).toBe(77);
  });

  it("caches discovery and JWKS in its HOME and refetches on an unknown kid", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    await verify(await token(), idp, { cacheDir });
    const fetches = () => idp.calls.filter((c) => c.startsWith("GET")).length;
    expect(fetches()).toBe(2);
    expect(readdirSync(cacheDir).filter((f) => f.startsWith("jwks-"))).toHaveLength(1);
    const again = await verify(await token(), idp, { cacheDir });
    expect(again.exit).toBe(0);
    expect(fetches()).toBe(2);
    // An unknown kid refetches at once (the IdP may have rotated)...
    await verify(await token({}, foreignKey.privateKey, "k2"), idp, { cacheDir });
    expect(fetches()).toBe(4);
    // ...but made-up kids right after that refetch get no more fetches (rate limit).
    const r = await verify(await token({}, foreignKey.privateKey, "k3"), idp, { cacheDir });
    expect(r.verdict).toMatchObject({ reason: "signature_invalid" });
    expect(fetches()).toBe(4);
  });

  it("picks up a rotated key: the new kid is fetched at once, the old one still verifies", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0);
    const rotated = generateKeyPairSync("ed25519");
    const jwk2 = { ...(await exportJWK(rotated.publicKey)), kid: "k2", alg: "EdDSA", use: "sig" };
    idp.keys = () => [jwk, jwk2];
    expect((await verify(await token({}, rotated.privateKey, "k2"), idp, { cacheDir })).exit).toBe(0);
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0);
  });

  it("ignores a cache entry whose grants endpoint is on another origin", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    await verify(await token(), idp, { cacheDir });
    const file = join(cacheDir, readdirSync(cacheDir).find((f) => f.startsWith("jwks-"))!);
    const entry = JSON.parse(readFileSync(file, "utf8"));
    writeFileSync(
      file,
      JSON.stringify({
        ...entry,
        endpoints: {
          ...entry.endpoints,
          openape_grants_endpoint: "https://collector.example.com/api/grants",
        },
      }),
    );
    const r = await verify(await token(), idp, { cacheDir });
    expect(r.exit).toBe(0);
    expect(idp.calls.at(-1)).toBe(`POST ${ISS}/api/grants/6f1c2b3a-0000-4000-8000-000000000001/consume`);
  });

  it("never uses keys cached under another trust anchor (the CA changed, or was pinned)", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    const fetches = () => idp.calls.filter((c) => c.startsWith("GET")).length;
    const pinned = (body: string) => POLICY.replace("[users]", `ca_pem = '''\n${pem(body)}\n'''\n[users]`);
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0); // system roots
    expect(fetches()).toBe(2);
    expect((await verify(await token(), idp, { cacheDir, policy: pinned("AAAA") })).exit).toBe(0);
    expect(fetches()).toBe(4);
    expect((await verify(await token(), idp, { cacheDir, policy: pinned("BBBB") })).exit).toBe(0);
    expect(fetches()).toBe(6);
    // Each anchor has its own entry, which it reuses.
    expect((await verify(await token(), idp, { cacheDir, policy: pinned("AAAA") })).exit).toBe(0);
    expect(fetches()).toBe(6);
    // An entry that names another anchor (or none, as older verifiers wrote) is ignored.
    for (const f of readdirSync(cacheDir)) {
      const entry = JSON.parse(readFileSync(join(cacheDir, f), "utf8"));
      writeFileSync(join(cacheDir, f), JSON.stringify({ ...entry, anchor: undefined }));
    }
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0);
    expect(fetches()).toBe(8);
  });

  it("leaves no temporary file behind when the cache cannot be written", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    await verify(await token(), idp, { cacheDir });
    const [entry] = readdirSync(cacheDir);
    // A directory where the entry should be: the temp file is written, the rename over it fails.
    rmSync(join(cacheDir, entry!));
    mkdirSync(join(cacheDir, entry!, "x"), { recursive: true });
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0);
    expect(readdirSync(cacheDir)).toEqual([entry]);
  });

  it("prints timing lines on stderr only when asked", async () => {
    const quiet = await verify(await token(), fakeIdp());
    expect(quiet.stderr).toBe("");
    const timed = await verify(await token(), fakeIdp(), { req: { timing: true } });
    expect(timed.stderr).toMatch(/^apes-timing: verifier consume [\d.]+$/m);
    // ms from the process's start to the verifier's first line (the runtime's and the bundle's start-up)
    expect(timed.stderr).toMatch(/^apes-timing: verifier start [\d.]+$/m);
  });
});

describe("while it waits for its request line (an early verifier waits through a person's decision)", () => {
  it("has read the policy and the issuers' cached keys: the line then costs no file read, no fetch but consume", async () => {
    const cacheDir = mkdtempSync(join(dir, "cache-"));
    const idp = fakeIdp();
    expect((await verify(await token(), idp, { cacheDir })).exit).toBe(0); // fills the cache
    const file = join(dir, `policy-${n++}.toml`);
    writeFileSync(file, POLICY, { mode: 0o600 });
    const fd = openSync(file, "r");
    const stdin = new PassThrough();
    let stdout = "";
    try {
      idp.calls.length = 0;
      const run = runVerifier(
        { stdin, stdout: { write: (s: string) => (stdout += s) }, stderr: { write: () => true } },
        { configFd: fd, http: idp.http, cacheDir, policyOwnerUid: process.getuid?.() ?? 0 },
      );
      // The policy fd's offset (shared with the shim) is at its end before any line was written.
      const pos = () => Number(/^pos:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))?.[1]);
      for (let i = 0; i < 100 && pos() === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(pos()).toBe(Buffer.byteLength(POLICY));
      // The keys were read ahead: removing the cache file now changes nothing.
      for (const f of readdirSync(cacheDir)) rmSync(join(cacheDir, f));
      const line = {
        jwt: await token(),
        argv: ARGV,
        cmd_hash: cmdHash(ARGV),
        user: "deploy",
        uid: 1001,
        run_as: "root",
      };
      stdin.end(`${JSON.stringify(line)}\n`);
      expect((await run).exit).toBe(0);
      expect(JSON.parse(stdout)).toMatchObject({ ok: true });
      expect(idp.calls).toEqual([`POST ${ISS}/api/grants/6f1c2b3a-0000-4000-8000-000000000001/consume`]);
    } finally {
      closeSync(fd);
    }
  });

  it("still refuses a bad policy only after a valid line, with the same reason", async () => {
    const r = await verify(await token(), fakeIdp(), { policy: "issuers = 1\n" });
    expect(r.verdict).toMatchObject({ ok: false, reason: "config_invalid" });
    const noLine = await verify("", fakeIdp(), { policy: "issuers = 1\n", req: { jwt: undefined } });
    expect(noLine.verdict).toMatchObject({ ok: false, reason: "request_invalid" });
  });
});

describe("ca_file: trusted only when root guards it like the policy", () => {
  const CA = pem("CCCC");
  const withCaFile = (file: string) => `ca_file = ${JSON.stringify(file)}\n${POLICY}`;
  let caDir: string;
  beforeAll(() => {
    caDir = mkdtempSync(join(dir, "ca-"));
    chmodSync(caDir, 0o755);
  });
  const caFile = (name: string, mode = 0o644) => {
    const file = join(caDir, name);
    writeFileSync(file, CA);
    chmodSync(file, mode);
    return file;
  };
  const refused = async (file: string, why: RegExp) => {
    const idp = fakeIdp();
    const r = await verify(await token(), idp, { policy: withCaFile(file) });
    expect(r.verdict).toMatchObject({ ok: false, reason: "config_invalid" });
    expect(r.verdict.detail).toMatch(why);
    expect(r.exit).toBe(78);
    expect(idp.calls).toEqual([]); // refused before any fetch
  };

  it("accepts a root-owned file no one else can write, in root-owned directories", async () => {
    expect((await verify(await token(), fakeIdp(), { policy: withCaFile(caFile("ok.pem")) })).exit).toBe(0);
  });
  it("refuses a group- or world-writable file", async () => {
    await refused(caFile("g.pem", 0o664), /writable/);
    await refused(caFile("w.pem", 0o646), /writable/);
  });
  it("refuses a file owned by another user", async () => {
    const file = caFile("other.pem");
    chownSync(file, 1234, 1234);
    await refused(file, /owned by uid 1234/);
  });
  it("refuses a file in a directory another user can write to", async () => {
    const open = mkdtempSync(join(dir, "open-"));
    chmodSync(open, 0o777);
    writeFileSync(join(open, "ca.pem"), CA);
    await refused(join(open, "ca.pem"), /writable/);
    const theirs = mkdtempSync(join(dir, "theirs-"));
    chownSync(theirs, 1234, 1234);
    writeFileSync(join(theirs, "ca.pem"), CA);
    await refused(join(theirs, "ca.pem"), /owned by uid 1234/);
  });
  it("refuses a symlink, also one in a directory of the path", async () => {
    const target = caFile("target.pem");
    symlinkSync(target, join(caDir, "link.pem"));
    await refused(join(caDir, "link.pem"), /symlinks/);
    symlinkSync(caDir, join(dir, "linked-dir"));
    await refused(join(dir, "linked-dir", "target.pem"), /symlinks/);
  });
  it("refuses a FIFO without blocking on it, and a missing file", async () => {
    const fifo = join(caDir, "fifo.pem");
    execFileSync("mkfifo", [fifo]);
    await refused(fifo, /regular file/);
    await refused(join(caDir, "missing.pem"), /ENOENT/);
  });
});

describe("readLine", () => {
  it("stops at the first newline and refuses oversized input", async () => {
    expect(await readLine(Readable.from(["ab", "c\nrest"]), 100)).toBe("abc");
    expect(await readLine(Readable.from(["x".repeat(200)]), 100)).toBeUndefined();
    expect(await readLine(Readable.from([]), 100)).toBeUndefined();
  });
});
