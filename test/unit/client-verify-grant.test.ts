import { generateKeyPairSync } from "node:crypto";
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HttpUnreachable, type JsonHttp, requestJson } from "../../client/http.ts";
import { verifyAuthzJwt, verifyOptionsProblem } from "../../client/verify-grant.ts";
import { signJwt } from "../../protocol/jwt.ts";

// The module's effects before and around the shared claim checks: what it fetches (nothing for a
// token it can refuse on sight), and the bounds of its default HTTP client.

const ISSUER = "https://id.example.com";
const key = generateKeyPairSync("ed25519").privateKey;
const now = Math.floor(Date.now() / 1000);
const claims = {
  iss: ISSUER,
  sub: "agent@example.com",
  act: "agent",
  aud: "prod-server",
  target_host: "prod-server",
  iat: now,
  exp: now + 300,
  jti: "j",
  grant_id: "2f0c1f8e-8d9b-4c1e-9a57-3b1f2e4d5c6a",
  grant_type: "once",
  permissions: ["deploy"],
  decided_by: "alice@example.com",
};

function countingHttp(): { http: JsonHttp; urls: string[] } {
  const urls: string[] = [];
  return {
    urls,
    http: async (url) => {
      urls.push(url);
      throw new HttpUnreachable(`${url}: connection refused`);
    },
  };
}

describe("verifyAuthzJwt", () => {
  it("fetches nothing for a foreign issuer, a pinned-away alg or a missing kid", async () => {
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const tokens: [string, string][] = [
      [
        signJwt({ ...claims, iss: "https://evil.example" }, { kid: "k", privateKey: key }),
        "issuer_not_allowed",
      ],
      [`${b64({ alg: "HS256", kid: "k" })}.${b64(claims)}.c2ln`, "signature_invalid"],
      [`${b64({ alg: "none" })}.${b64(claims)}.c2ln`, "signature_invalid"],
      [signJwt(claims, { privateKey: key }), "signature_invalid"],
      [`${b64(claims)}.x`, "token_malformed"],
    ];
    for (const [jwt, reason] of tokens) {
      const { http, urls } = countingHttp();
      const r = await verifyAuthzJwt(jwt, { issuers: [ISSUER], audience: "prod-server", http });
      expect(r).toMatchObject({ valid: false, reason });
      expect(urls).toEqual([]);
    }
  });

  it("asks only the allowed issuer, and says so when it cannot be reached", async () => {
    const { http, urls } = countingHttp();
    const jwt = signJwt(claims, { kid: "k", privateKey: key });
    const r = await verifyAuthzJwt(jwt, { issuers: [`${ISSUER}/`], audience: "prod-server", http });
    expect(r).toMatchObject({ valid: false, reason: "jwks_unavailable" });
    expect(urls).toEqual([`${ISSUER}/.well-known/openid-configuration`]);
  });

  it("spends the grant at the issuer's own grants endpoint, failing closed without an answer", async () => {
    const x = (key.export({ format: "jwk" }) as { x: string }).x;
    const consumes: string[] = [];
    const issuerHttp =
      (consume: () => Promise<{ status: number; body: unknown }>): JsonHttp =>
      async (url, init) => {
        if (url === `${ISSUER}/.well-known/openid-configuration`)
          return {
            status: 200,
            body: {
              issuer: ISSUER,
              jwks_uri: `${ISSUER}/jwks`,
              openape_grants_endpoint: `${ISSUER}/api/grants`,
            },
          };
        if (url === `${ISSUER}/jwks`)
          return { status: 200, body: { keys: [{ kty: "OKP", crv: "Ed25519", x, kid: "k", alg: "EdDSA" }] } };
        consumes.push(`${init?.method} ${url} ${init?.headers?.authorization?.slice(0, 7)}`);
        return consume();
      };
    const jwt = signJwt(claims, { kid: "k", privateKey: key });
    const opts = { issuers: [ISSUER], audience: "prod-server", consume: true };
    const ok = await verifyAuthzJwt(jwt, {
      ...opts,
      http: issuerHttp(async () => ({ status: 200, body: { status: "consumed" } })),
    });
    expect(ok).toMatchObject({ valid: true, consumed: "consumed" });
    expect(consumes).toEqual([`POST ${ISSUER}/api/grants/${claims.grant_id}/consume Bearer `]);
    const cases: [() => Promise<{ status: number; body: unknown }>, string][] = [
      [async () => ({ status: 503, body: undefined }), "idp_unreachable"],
      [() => Promise.reject(new TypeError("fetch failed")), "idp_unreachable"],
      [
        async () => ({ status: 409, body: { error: "already_consumed", status: "used" } }),
        "grant_not_usable",
      ],
      [async () => ({ status: 200, body: { status: "valid" } }), "grant_not_usable"],
    ];
    for (const [consume, reason] of cases)
      expect(await verifyAuthzJwt(jwt, { ...opts, http: issuerHttp(consume) })).toMatchObject({
        valid: false,
        reason,
      });
  });

  it("refuses options a caller got wrong", async () => {
    const ok = { issuers: [ISSUER], audience: "prod-server" };
    expect(verifyOptionsProblem(ok)).toBeUndefined();
    expect(verifyOptionsProblem({ ...ok, issuers: [] })).toContain("issuer");
    expect(verifyOptionsProblem({ ...ok, issuers: ["http://id.example.com"] })).toContain("https");
    expect(verifyOptionsProblem({ ...ok, issuers: ["http://127.0.0.1:8080"] })).toBeUndefined();
    expect(verifyOptionsProblem({ ...ok, audience: "" })).toContain("audience");
    expect(verifyOptionsProblem({ ...ok, command: [] })).toContain("command");
    expect(verifyOptionsProblem({ ...ok, permissions: [""] })).toContain("permission");
    await expect(verifyAuthzJwt("x", { ...ok, issuers: [] })).rejects.toThrow(TypeError);
  });
});

describe("requestJson: bounded in size and time", () => {
  let server: Server;
  let base: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === "/big") {
        res.writeHead(200, { "content-type": "application/json" });
        const chunk = Buffer.alloc(64 * 1024, 0x20);
        let sent = 0;
        const pump = () => {
          // At most 8 MiB: the client must give up long before.
          while (sent < 128 && res.write(chunk)) sent++;
          if (sent < 128) res.once("drain", pump);
          else res.end();
        };
        pump();
      } else if (req.url === "/silent") {
        // never answers
      } else res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const a = server.address();
    base = `http://127.0.0.1:${typeof a === "object" && a ? a.port : 0}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });

  it("returns the parsed answer", async () => {
    expect(await requestJson(`${base}/ok`)).toEqual({ status: 200, body: { ok: true } });
  });
  it("cuts off an answer larger than maxBytes", async () => {
    await expect(requestJson(`${base}/big`, { maxBytes: 256 * 1024 })).rejects.toThrow(/larger than 256 KiB/);
  });
  it("gives up on a silent server", async () => {
    await expect(requestJson(`${base}/silent`, { timeoutMs: 300 })).rejects.toThrow(/no answer within 0.3 s/);
  });
  it("refuses plain http to a host that is not loopback, before any connection", async () => {
    // 192.0.2.0/24 is TEST-NET-1: a connection attempt would hang until the deadline.
    await expect(requestJson("http://192.0.2.10/x", { timeoutMs: 60_000 })).rejects.toThrow(/not loopback/);
  });
  it("reports a refused connection as unreachable", async () => {
    await expect(requestJson("http://127.0.0.1:9/")).rejects.toBeInstanceOf(HttpUnreachable);
  });
});
