import { generateKeyPairSync } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { exportJWK, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { HTTP_DEADLINE_MS, runVerifier } from "../../verifier/verify.ts";
import { loopbackCert } from "../helpers/idp.ts";

/**
 * The verifier's own HTTPS client against a local TLS server (pinned CA) that can drip: one byte every
 * 200 ms stays far below the 1 MiB cap and never trips an idle timeout, so only a deadline for the
 * whole request (headers and body) ends it. Each step must fail closed with its reason code.
 */

const ARGV = ["id", "-u"];
type Drip = "none" | "discovery-body" | "jwks-headers" | "consume-body";

let dir: string;
let server: Server;
let issuer: string;
let caPem: string;
const sockets = new Set<Socket>();
const connections: Socket[] = [];
const requestsOn = new Map<Socket, number>();
const timers = new Set<NodeJS.Timeout>();
const idpKey = generateKeyPairSync("ed25519");
let jwk: Record<string, unknown>;

/** Writes `text` one byte per tick until it is done or the client goes away. */
function drip(socket: Socket, text: string): void {
  let i = 0;
  const t = setInterval(() => {
    if (socket.destroyed || i >= text.length) {
      clearInterval(t);
      timers.delete(t);
      return;
    }
    socket.write(text[i++]!);
  }, 200);
  timers.add(t);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "apes-verifier-http-"));
  const tls = loopbackCert(dir);
  caPem = readFileSync(tls.cert, "utf8");
  jwk = { ...(await exportJWK(idpKey.publicKey)), kid: "k1", alg: "EdDSA", use: "sig" };
  server = createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, (req, res) => {
    const path = new URL(req.url ?? "/", issuer).pathname;
    const json = (body: unknown) => JSON.stringify(body);
    // The drip mode travels in the path's first segment, so each test has its own issuer.
    const [, tenant, ...rest] = path.split("/");
    const dripMode = tenant as Drip;
    const route = `/${rest.join("/")}`;
    const base = `${issuer}/${tenant}`;
    let body: string;
    if (route === "/.well-known/openid-configuration") {
      body = json({
        issuer: base,
        jwks_uri: `${base}/.well-known/jwks.json`,
        openape_grants_endpoint: `${base}/api/grants`,
      });
    } else if (route === "/.well-known/jwks.json") body = json({ keys: [jwk] });
    else if (route.endsWith("/consume")) body = json({ status: "consumed" });
    else {
      res.writeHead(404).end();
      return;
    }
    const dripped =
      (dripMode === "discovery-body" && route.startsWith("/.well-known/openid")) ||
      (dripMode === "jwks-headers" && route.startsWith("/.well-known/jwks")) ||
      (dripMode === "consume-body" && route.endsWith("/consume"));
    if (!dripped) {
      res.writeHead(200, { "content-type": "application/json" }).end(body);
      return;
    }
    if (dripMode === "jwks-headers") {
      drip(
        req.socket,
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n${"x-pad: y\r\n".repeat(50)}\r\n`,
      );
      return;
    }
    // Padded (JSON allows trailing blanks) so the drip lasts far longer than the deadline.
    const padded = `${body}${" ".repeat(500)}`;
    res.writeHead(200, { "content-type": "application/json", "content-length": String(padded.length) });
    res.flushHeaders();
    drip(req.socket, padded);
  });
  server.on("request", (req) => requestsOn.set(req.socket, (requestsOn.get(req.socket) ?? 0) + 1));
  server.on("secureConnection", (s: Socket) => {
    connections.push(s);
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  if (!addr || typeof addr === "string") throw new Error("no port");
  issuer = `https://127.0.0.1:${addr.port}`;
});

afterAll(async () => {
  for (const t of timers) clearInterval(t);
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

async function verifyAgainst(mode: Drip, beforeLine?: () => Promise<void>) {
  const iss = `${issuer}/${mode}`;
  const now = Math.floor(Date.now() / 1000);
  const jwt = await new SignJWT({
    iss,
    sub: "agent@example.com",
    aud: "escapes",
    target_host: "web1",
    jti: crypto.randomUUID(),
    grant_id: "6f1c2b3a-0000-4000-8000-000000000001",
    grant_type: "once",
    approval: "once",
    command: ARGV,
    cmd_hash: cmdHash(ARGV),
    run_as: "root",
    decided_by: "alice@example.com",
    iat: now,
    exp: now + 300,
  })
    .setProtectedHeader({ alg: "EdDSA", kid: "k1" })
    .sign(idpKey.privateKey);
  const file = join(dir, `policy-${mode}.toml`);
  writeFileSync(
    file,
    `issuers = ["${iss}"]\napprovers = ["alice@example.com"]\nhost = "web1"\nca_pem = '''\n${caPem.trim()}\n'''\n[users]\ndeploy = ["agent@example.com"]\n`,
    { mode: 0o600 },
  );
  const fd = openSync(file, "r");
  const line = JSON.stringify({
    jwt,
    argv: ARGV,
    cmd_hash: cmdHash(ARGV),
    user: "deploy",
    uid: 1001,
    run_as: "root",
  });
  let stdout = "";
  const started = performance.now();
  const stdin = new PassThrough();
  try {
    const run = runVerifier(
      {
        stdin,
        stdout: { write: (s: string) => (stdout += s) },
        stderr: { write: () => true },
      },
      { configFd: fd, policyOwnerUid: process.getuid?.() ?? 0 },
    );
    await beforeLine?.();
    stdin.end(`${line}\n`);
    const r = await run;
    return { ...r, verdict: JSON.parse(stdout) as Record<string, unknown>, ms: performance.now() - started };
  } finally {
    closeSync(fd);
  }
}

describe.concurrent("the verifier's HTTPS client: a deadline for each whole request", () => {
  // Generous bound: several deadlines, far below what a drip of the whole answer would take.
  const bound = 3 * HTTP_DEADLINE_MS;

  it("talks to an honest IdP through the pinned CA", async () => {
    const r = await verifyAgainst("none");
    expect(r.verdict).toMatchObject({ ok: true, grant_id: "6f1c2b3a-0000-4000-8000-000000000001" });
  });

  it("a discovery document dripped byte by byte fails closed (jwks_unavailable)", async () => {
    const r = await verifyAgainst("discovery-body");
    expect(r.verdict).toMatchObject({ ok: false, reason: "jwks_unavailable" });
    expect(r.verdict.detail).toContain("no complete answer within");
    expect(r.exit).toBe(69);
    expect(r.ms).toBeLessThan(bound);
  }, 30_000);

  it("JWKS headers dripped byte by byte fail closed (jwks_unavailable)", async () => {
    const r = await verifyAgainst("jwks-headers");
    expect(r.verdict).toMatchObject({ ok: false, reason: "jwks_unavailable" });
    expect(r.verdict.detail).toContain("no complete answer within");
    expect(r.ms).toBeLessThan(bound);
  }, 30_000);

  it("a consume answer dripped byte by byte fails closed (idp_unreachable)", async () => {
    const r = await verifyAgainst("consume-body");
    expect(r.verdict).toMatchObject({ ok: false, reason: "idp_unreachable" });
    expect(r.verdict.detail).toContain("no complete answer within");
    expect(r.exit).toBe(69);
    expect(r.ms).toBeLessThan(bound);
  }, 30_000);
});

describe("connections opened ahead (while the verifier waits for its line)", () => {
  it("one to the allow-listed issuer before any line; the first request goes over it, nothing is left open", async () => {
    const before = connections.length;
    const r = await verifyAgainst("none", async () => {
      for (let i = 0; i < 100 && connections.length === before; i++)
        await new Promise((t) => setTimeout(t, 10));
      expect(connections.length).toBe(before + 1); // made ahead, with the pinned CA
      expect(requestsOn.get(connections[before]!)).toBeUndefined(); // and no request on it yet
    });
    expect(r.verdict).toMatchObject({ ok: true });
    const mine = connections.slice(before);
    // discovery (over the connection made ahead), JWKS and consume: three requests, three connections.
    expect(mine.map((c) => requestsOn.get(c) ?? 0)).toEqual([1, 1, 1]);
    for (let i = 0; i < 100 && mine.some((c) => !c.destroyed); i++)
      await new Promise((t) => setTimeout(t, 10));
    expect(mine.every((c) => c.destroyed)).toBe(true);
  });
});
