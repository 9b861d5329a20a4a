import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { type IdpHandle, loopbackCert, startIdp } from "../helpers/idp.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  makeUserDir,
  readAudit,
  runAsUser,
  type ShimInstall,
  spawnAsUser,
  type UnixUser,
  writeConfig,
} from "../helpers/shim.ts";

/**
 * A local user who becomes the trusted IdP. The REAL non-root test user runs the REAL setuid shim;
 * as that user, a "squatter" binds the issuer's loopback port while the IdP is down, serves its own
 * discovery document, JWKS and consume answer, and signs its own AuthZ-JWT (decided_by an approver of
 * the policy); the user's own requester hands that token to the shim (NODE_OPTIONS=--require, which
 * the requester honours, as it runs as the user). Nothing may run as root, and the audit says why.
 */

const ALICE = "alice@example.com";
const BOT = "bot@example.com";

let inst: ShimInstall;
let user: UnixUser;
let work: string;
let userDir: string; // owned by the test user: its HOME, its squatter's files
let evilPreload: string;
let idp: IdpHandle; // the real IdP (TLS), for the anchor-change case
let idpCa: string;
const squatters = new Set<ChildProcess>();

const SQUATTER = `// Run as the local non-root user: argv scheme port cert key tokensOut claimsJsonArray
import { createServer as httpServer } from "node:http";
import { createServer as httpsServer } from "node:https";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
const [scheme, port, cert, key, out, claims] = process.argv.slice(2);
const issuer = scheme + "://127.0.0.1:" + port;
const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const jwk = { ...publicKey.export({ format: "jwk" }), kid: "squat", alg: "EdDSA", use: "sig" };
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const signed = JSON.parse(claims).map((c) => {
  const input = b64({ alg: "EdDSA", kid: "squat" }) + "." + b64({ iss: issuer, aud: "escapes", jti: randomUUID(),
    grant_id: randomUUID(), grant_type: "once", approval: "once", run_as: "root", iat: now, exp: now + 300, ...c });
  return input + "." + sign(null, Buffer.from(input), privateKey).toString("base64url");
});
writeFileSync(out, signed.join("\\n"));
const docs = {
  "/.well-known/openid-configuration": { issuer, jwks_uri: issuer + "/.well-known/jwks.json",
    openape_grants_endpoint: issuer + "/api/grants" },
  "/.well-known/jwks.json": { keys: [jwk] },
};
const handle = (req, res) => {
  const body = req.url.endsWith("/consume") ? { status: "consumed" } : docs[req.url];
  res.writeHead(body ? 200 : 404, { "content-type": "application/json" }).end(JSON.stringify(body ?? {}));
};
const server = scheme === "https"
  ? httpsServer({ cert: readFileSync(cert), key: readFileSync(key) }, handle) : httpServer(handle);
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
`;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A self-signed TLS pair the test user makes itself, with openssl, in a directory of its own. */
async function userCert(name: string, dir = userDir): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  const args = ["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"];
  args.push("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert);
  const r = await runAsUser(user, ["/usr/bin/openssl", ...args], {
    env: { PATH: "/usr/bin:/bin", HOME: userDir },
  });
  expect(r.code, r.stderr).toBe(0);
  return { cert, key };
}

/**
 * Starts the squatter as the test user on 127.0.0.1:port; resolves once it listens, with the tokens it
 * signed with its key (one for `argv`, then one per entry of `variants`, claims changed) and a stop.
 */
async function squat(
  scheme: "http" | "https",
  port: number,
  argv: string[],
  tls?: { cert: string; key: string },
  variants: Record<string, unknown>[] = [],
): Promise<{ tokens: string[]; stop(): Promise<void> }> {
  const out = join(userDir, `tokens-${port}`);
  const base = {
    sub: BOT,
    target_host: hostname(),
    command: argv,
    cmd_hash: cmdHash(argv),
    decided_by: ALICE,
  };
  const claims = [base, ...variants.map((v) => ({ ...base, ...v }))];
  const script = join(userDir, "squatter.mjs");
  const p = spawnAsUser(
    user,
    [
      process.execPath,
      script,
      scheme,
      String(port),
      tls?.cert ?? "-",
      tls?.key ?? "-",
      out,
      JSON.stringify(claims),
    ],
    { env: { PATH: "/usr/bin:/bin", HOME: userDir } },
  );
  squatters.add(p);
  let stderr = "";
  p.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  await new Promise<void>((resolve, reject) => {
    p.stdout!.on("data", (c: Buffer) => c.toString().includes("listening") && resolve());
    p.once("exit", (code) => reject(new Error(`the squatter exited (${code}): ${stderr}`)));
  });
  const stop = async () => {
    if (p.exitCode === null && p.signalCode === null) {
      const gone = new Promise((r) => p.once("exit", r));
      p.kill("SIGKILL");
      await gone;
    }
    squatters.delete(p);
  };
  return { tokens: readFileSync(out, "utf8").split("\n"), stop };
}

function policy(issuer: string, extra: string): string {
  return `issuers = ["${issuer}"]\napprovers = ["${ALICE}"]\n${extra}\n[users]\n"${user.name}" = ["${BOT}"]\n`;
}
const pinned = (pemFile: string) => `ca_pem = '''\n${readFileSync(pemFile, "utf8").trim()}\n'''`;

/** `apes -- argv` through the shim as the test user, whose requester hands the shim `token`. */
async function elevate(
  argv: string[],
  token: string,
): Promise<{ code: number | null; stderr: string; audit?: AuditLine }> {
  const before = readAudit(inst).length;
  const file = join(userDir, `evil-${before}`);
  writeFileSync(file, token, { mode: 0o644 });
  const r = await collect(
    spawnAsUser(user, [inst.shim, "--", ...argv], {
      env: {
        HOME: userDir,
        PATH: "/usr/bin:/bin",
        LANG: "C.UTF-8",
        NODE_OPTIONS: `--require ${evilPreload}`,
        EVIL_TOKEN: file,
      },
    }),
    { timeoutMs: 30_000 },
  );
  const lines = readAudit(inst);
  return { code: r.code, stderr: r.stderr, audit: lines.length > before ? lines.at(-1) : undefined };
}

function marker(name: string): string {
  return join(work, "markers", name);
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the elevation e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  work = mkdtempSync(join(tmpdir(), "apes-issuer-e2e-"));
  chmodSync(work, 0o755);
  mkdirSync(join(work, "markers"), { mode: 0o755 });
  userDir = makeUserDir(user, work);
  writeFileSync(join(userDir, "squatter.mjs"), SQUATTER, { mode: 0o644 });
  evilPreload = join(work, "evil.cjs");
  writeFileSync(
    evilPreload,
    `const fs = require("node:fs");
if (process.argv.includes("__request")) {
  fs.writeSync(3, fs.readFileSync(process.env.EVIL_TOKEN, "utf8"));
  process.exit(0);
}
`,
    { mode: 0o644 },
  );
  const tlsDir = join(work, "idp-tls");
  mkdirSync(tlsDir);
  const tls = loopbackCert(tlsDir);
  idpCa = tls.cert;
  idp = await startIdp({ tls });
}, 120_000);

afterAll(async () => {
  for (const p of squatters) p.kill("SIGKILL");
  await idp?.stop();
  await inst?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("a local user squatting the issuer's port gets nothing run as root", () => {
  it("a plain-http loopback issuer (allow_loopback_http) is refused: the policy is invalid", async () => {
    const port = await freePort();
    const issuer = `http://127.0.0.1:${port}`;
    writeConfig(inst, policy(issuer, "allow_loopback_http = true"));
    const m = marker("http-squat");
    const s = await squat("http", port, ["touch", m]);
    try {
      const r = await elevate(["touch", m], s.tokens[0]!);
      expect(existsSync(m), r.stderr).toBe(false);
      expect(r.code).not.toBe(0);
      expect(r.audit).toMatchObject({ decision: "deny", reason: "config_invalid" });
      expect(r.stderr).toContain("plain http");
    } finally {
      await s.stop();
    }
  });

  it("over https with the IdP's CA pinned, the squatter's own certificate fails TLS", async () => {
    const port = await freePort();
    writeConfig(inst, policy(`https://127.0.0.1:${port}`, pinned(idpCa)));
    const m = marker("https-squat");
    const s = await squat("https", port, ["touch", m], await userCert("own"));
    try {
      const r = await elevate(["touch", m], s.tokens[0]!);
      expect(existsSync(m), r.stderr).toBe(false);
      expect(r.audit).toMatchObject({ decision: "deny", reason: "jwks_unavailable" });
      expect(r.stderr).toContain("TLS");
    } finally {
      await s.stop();
    }
  });

  it("a ca_file the user can write is refused (the user put its own CA there)", async () => {
    const port = await freePort();
    // A directory of the user's that the verifier (_apes) can read, as the user may well make it.
    const shared = makeUserDir(user, work);
    chmodSync(shared, 0o755);
    const tls = await userCert("writable-ca", shared);
    chmodSync(tls.cert, 0o644);
    writeConfig(inst, policy(`https://127.0.0.1:${port}`, `ca_file = "${tls.cert}"`));
    const m = marker("ca-file-squat");
    const s = await squat("https", port, ["touch", m], tls);
    try {
      const r = await elevate(["touch", m], s.tokens[0]!);
      expect(existsSync(m), r.stderr).toBe(false);
      expect(r.audit).toMatchObject({ decision: "deny", reason: "config_invalid" });
      expect(r.stderr).toContain(`ca_file ${tls.cert}`);
    } finally {
      await s.stop();
    }
  });

  it("keys cached under one trust anchor are not used after the policy pins another", async () => {
    // The IdP is down; the user squats its port with a certificate of its own, which the policy pins
    // by mistake. One verification caches the squatter's keys (that token is for another host, so
    // nothing runs); the user keeps a second token signed with the same key.
    const issuer = idp.issuer;
    const port = Number(new URL(issuer).port);
    await idp.stop();
    const tls = await userCert("mistaken-ca");
    writeConfig(inst, policy(issuer, pinned(tls.cert)));
    const m = marker("cached-anchor");
    const s = await squat("https", port, ["touch", m], tls, [{ target_host: "elsewhere" }]);
    try {
      const first = await elevate(["touch", m], s.tokens[1]!);
      expect(first.audit, first.stderr).toMatchObject({ decision: "deny", reason: "host_mismatch" });
    } finally {
      await s.stop();
    }
    // The admin pins the IdP's own CA, and the IdP is back on its port: within the cache's lifetime.
    writeConfig(inst, policy(issuer, pinned(idpCa)));
    await idp.restart();
    const r = await elevate(["touch", m], s.tokens[0]!);
    expect(existsSync(m), r.stderr).toBe(false);
    // Fetched afresh under the new anchor: the real IdP does not publish the squatter's key.
    expect(r.audit, r.stderr).toMatchObject({ decision: "deny", reason: "signature_invalid" });
    const anchors = readdirSync(inst.cacheDir)
      .filter((f) => f.startsWith("jwks-"))
      .map((f) => JSON.parse(readFileSync(join(inst.cacheDir, f), "utf8")).anchor);
    const fingerprint = (f: string) =>
      `sha256:${createHash("sha256")
        .update(`${readFileSync(f, "utf8").trim()}\n`)
        .digest("hex")}`;
    expect(anchors.sort()).toEqual([fingerprint(tls.cert), fingerprint(idpCa)].sort());
  });
});
