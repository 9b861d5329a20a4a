import { spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { addUser, apesBin, type IdpHandle, loopbackCert, newKey, runApes, startIdp } from "../helpers/idp.ts";
import { tokenAfterReady } from "../helpers/shim.ts";

/**
 * The two TypeScript halves of elevation with the real binary and the real IdP, without the shim:
 * `apes __request` delivers the AuthZ-JWT on an inherited fd, `apes __verify` checks it against a
 * policy on fd 3 and consumes it. Covers what the shim cannot stage deterministically: a JWT signed
 * by a foreign key under the IdP's kid, and the IdP going away between token and consume. The IdP
 * speaks TLS with a self-signed certificate, pinned in the policy (issuers are https only).
 */

const HUMAN = "alice@example.com";
const AGENT = "bot@example.com";
let root: string;
let idp: IdpHandle;
/** The IdP's certificate: pinned inline in the policies, trusted by the clients through APES_CA_FILE. */
let caFile: string;
const caEnv = () => ({ APES_CA_FILE: caFile });
const home = (who: string) => join(root, who);

function policyFile(name: string, body: string): string {
  const file = join(root, `${name}.toml`);
  writeFileSync(file, body, { mode: 0o600 });
  return file;
}

function policyText(issuer: string): string {
  const ca = readFileSync(caFile, "utf8").trim();
  return `issuers = ["${issuer}"]\napprovers = ["${HUMAN}"]\nhost = "${hostname()}"\nca_pem = '''\n${ca}\n'''\n[users]\nroot = ["${AGENT}"]\n`;
}

/** `apes __request --result-fd 3 ...` as the agent; resolves with the exit code and what arrived on fd 3. */
function request(args: string[]): Promise<{ code: number; token: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(apesBin(), ["__request", "--result-fd", "3", ...args], {
      env: { ...process.env, ...caEnv(), HOME: home("agent") },
      stdio: ["ignore", "ignore", "pipe", "pipe"],
    });
    let token = "";
    let stderr = "";
    (p.stdio[3] as NodeJS.ReadableStream).on("data", (c: Buffer) => (token += c.toString()));
    p.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    p.on("close", (code) => resolve({ code: code ?? -1, token, stderr }));
  });
}

/** `apes __verify --config-fd 3` with the policy file on fd 3 and one request line on stdin. */
function verify(
  policy: string,
  line: Record<string, unknown>,
  cache: string,
): Promise<{ code: number; verdict: Record<string, unknown>; stderr: string }> {
  const fd = openSync(policy, "r");
  return new Promise((resolve) => {
    const p = spawn(apesBin(), ["__verify", "--config-fd", "3"], {
      env: { PATH: "/usr/bin:/bin", HOME: cache, LANG: "C.UTF-8", APES_VERIFIER: "1" },
      stdio: ["pipe", "pipe", "pipe", fd],
    });
    closeSync(fd);
    let out = "";
    let stderr = "";
    p.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    p.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    p.on("close", (code) => resolve({ code: code ?? -1, verdict: JSON.parse(out || "{}"), stderr }));
    p.stdin!.end(`${JSON.stringify(line)}\n`);
  });
}

const line = (jwt: string, argv: string[]) => ({
  jwt,
  argv,
  cmd_hash: cmdHash(argv),
  user: "root",
  uid: 0,
  run_as: "root",
});

/** Create (--no-wait), approve as the human, then fetch the token through __request --grant. */
async function approvedToken(argv: string[]): Promise<string> {
  const created = await runApes(["--no-wait", "--reason", "e2e", "--", ...argv], {
    ...caEnv(),
    HOME: home("agent"),
  });
  expect(created.code).toBe(75);
  const id = created.stdout.trim();
  const approved = await runApes(["grants", "approve", id], { ...caEnv(), HOME: home("human") });
  expect(approved.code, approved.stderr).toBe(0);
  const r = await request(["--grant", id, "--", ...argv]);
  expect(r.code, r.stderr).toBe(0);
  return tokenAfterReady(r.token);
}

beforeAll(async () => {
  if (process.getuid?.() !== 0)
    throw new Error("the elevation e2e tests run as root (CI does): the policy must be root-owned");
  root = mkdtempSync(join(tmpdir(), "apes-halves-"));
  const data = join(root, "idp");
  for (const [who, email, agent] of [
    ["human", HUMAN, false],
    ["agent", AGENT, true],
  ] as const) {
    const k = newKey(email);
    mkdirSync(home(who), { recursive: true });
    writeFileSync(join(home(who), "key.pem"), k.privateKey.export({ type: "pkcs8", format: "pem" }), {
      mode: 0o600,
    });
    await addUser(
      data,
      email,
      agent ? { agent: true, owner: HUMAN, publicKey: k.publicLine } : { publicKey: k.publicLine },
    );
  }
  const tls = loopbackCert(root);
  caFile = tls.cert;
  idp = await startIdp({ dataDir: data, tls });
  for (const [who, email] of [
    ["human", HUMAN],
    ["agent", AGENT],
  ] as const) {
    const r = await runApes(["login", email, "--key", join(home(who), "key.pem"), "--idp", idp.url], {
      ...caEnv(),
      HOME: home(who),
    });
    expect(r.code, r.stderr).toBe(0);
  }
});

afterAll(async () => {
  await idp?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe("__request + __verify with the real IdP", () => {
  it("delivers the token on fd 3 only; the verifier allows it once, then refuses the replay", async () => {
    const argv = ["id", "-u"];
    const token = await approvedToken(argv);
    expect(token).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    const cache = mkdtempSync(join(root, "cache-"));
    const policy = policyFile("ok", policyText(idp.issuer));
    const first = await verify(policy, line(token, argv), cache);
    expect(first.code, first.stderr).toBe(0);
    expect(first.verdict).toMatchObject({
      ok: true,
      sub: AGENT,
      decided_by: HUMAN,
      run_as: "root",
      cmd_hash: cmdHash(argv),
    });
    const replay = await verify(policy, line(token, argv), cache);
    expect(replay.code).toBe(77);
    expect(replay.verdict).toMatchObject({ ok: false, reason: "grant_not_usable" });
    expect(String(replay.verdict.detail)).toContain("already_consumed");
  });

  it("refuses a JWT with the IdP's kid and claims but signed by a foreign key", async () => {
    const argv = ["id", "-g"];
    const token = await approvedToken(argv);
    const [h, p] = token.split(".");
    const header = JSON.parse(Buffer.from(h!, "base64url").toString());
    const claims = JSON.parse(Buffer.from(p!, "base64url").toString());
    const foreign = generateKeyPairSync("ed25519").privateKey;
    const forged = await new SignJWT(claims)
      .setProtectedHeader({ alg: "EdDSA", kid: header.kid })
      .sign(foreign);
    const r = await verify(
      policyFile("forged", policyText(idp.issuer)),
      line(forged, argv),
      mkdtempSync(join(root, "cache-")),
    );
    expect(r.code).toBe(77);
    expect(r.verdict).toMatchObject({ ok: false, reason: "signature_invalid" });
    // The genuine token is untouched by the forgery attempt and still works.
    const ok = await verify(
      policyFile("genuine", policyText(idp.issuer)),
      line(token, argv),
      mkdtempSync(join(root, "cache-")),
    );
    expect(ok.verdict).toMatchObject({ ok: true });
  });

  it("denies issuer_not_allowed for a policy trusting another IdP, without contacting it", async () => {
    const argv = ["true"];
    const token = await approvedToken(argv);
    const r = await verify(
      policyFile("other", policyText("https://id.other.example")),
      line(token, argv),
      mkdtempSync(join(root, "cache-")),
    );
    expect(r.verdict).toMatchObject({ ok: false, reason: "issuer_not_allowed" });
  });

  it("follows a key rotation at the IdP: the new kid is fetched at once despite a fresh cache", async () => {
    const cache = mkdtempSync(join(root, "cache-"));
    const policy = policyFile("rotate", policyText(idp.issuer));
    const before = await approvedToken(["date"]);
    expect((await verify(policy, line(before, ["date"]), cache)).code).toBe(0);
    const rotated = await runApes(["idp", "keys", "rotate", "--data", idp.dataDir]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const after = await approvedToken(["date", "-u"]);
    const kid = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[0]!, "base64url").toString()).kid;
    expect(kid(after)).not.toBe(kid(before));
    const r = await verify(policy, line(after, ["date", "-u"]), cache);
    expect(r.code, r.stderr).toBe(0);
  });

  it("fails closed (idp_unreachable, 69) when the IdP is gone between token and consume", async () => {
    const argv = ["uname"];
    const cache = mkdtempSync(join(root, "cache-"));
    const policy = policyFile("down", policyText(idp.issuer));
    // Warm the JWKS cache with a first, successful verification.
    const warm = await verify(policy, line(await approvedToken(["uname", "-a"]), ["uname", "-a"]), cache);
    expect(warm.code, warm.stderr).toBe(0);
    const token = await approvedToken(argv);
    await idp.stop();
    try {
      const r = await verify(policy, line(token, argv), cache);
      expect(r.code).toBe(69);
      expect(r.verdict).toMatchObject({ ok: false, reason: "idp_unreachable" });
    } finally {
      await idp.restart();
    }
  });
});
