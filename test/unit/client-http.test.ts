import { mkdtempSync, rmSync } from "node:fs";
import type { ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseUserConfig } from "../../cli/config.ts";
import { ExitCode } from "../../cli/exit-codes.ts";
import type { Fetch } from "../../client/context.ts";
import { clearDiscoveryMemory, endpointRefusal, endpointsFrom } from "../../client/discovery.ts";
import type { ClientError } from "../../client/errors.ts";
import { grantsClient } from "../../client/grants.ts";
import { errorFor, IDP_TEXT_MAX, insecureUrlRefusal, nodeFetch, request } from "../../client/http.ts";
import { writeSession } from "../../client/session-store.ts";
import { asCli } from "../helpers/cli-error.ts";
import { fakeContext } from "../helpers/fake-context.ts";
import { type HostileServer, startHostileServer } from "../helpers/hostile-http.ts";
import { fakeJwt } from "./cli-fake-idp.ts";

let home: string;
const servers: HostileServer[] = [];
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "apes-http-"));
  clearDiscoveryMemory();
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  rmSync(home, { recursive: true, force: true });
});

const realHttp: Fetch = (input, init) => nodeFetch(input as string, init);

async function server(mode: Parameters<typeof startHostileServer>[0]): Promise<HostileServer> {
  const s = await startHostileServer(mode);
  servers.push(s);
  return s;
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

/** An IdP that serves only a discovery document with its grants endpoint at `grants`. */
async function idpWithGrantsAt(grants: (self: string) => string): Promise<HostileServer> {
  let self = "";
  const s = await server((req, res) => {
    if (req.url === "/.well-known/openid-configuration") {
      return json(res, 200, { issuer: self, openape_grants_endpoint: grants(self) });
    }
    json(res, 404, { title: "not found" });
  });
  self = s.url;
  return s;
}

/** A context logged in at `idp` (a session token that needs no renewal) over the real transport. */
async function loggedInAt(idp: string, config: Record<string, unknown> = {}) {
  const ctx = fakeContext({ home, http: realHttp, config });
  const now = Math.floor(ctx.clock.now() / 1000);
  await writeSession(ctx, {
    version: 1,
    idp,
    email: "bot@example.test",
    act: "agent",
    token: fakeJwt({ sub: "bot@example.test", act: "agent", exp: now + 3600 }),
    expires_at: now + 3600,
  });
  return ctx;
}

describe("endpoints from discovery stay on the IdP's origin", () => {
  it("a grants endpoint on another origin is refused, and no request reaches that origin", async () => {
    const elsewhere = await server((_req, res) => json(res, 200, { data: [] }));
    const idp = await idpWithGrantsAt(() => `${elsewhere.url}/api/grants`);
    const ctx = await loggedInAt(idp.url);
    const e = await grantsClient(ctx).then(
      (c) => c.list(),
      (x: unknown) => x,
    );
    expect((e as ClientError).failure).toBe("endpoint_refused");
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect((e as ClientError).message).toContain(
      `advertises openape_grants_endpoint = ${elsewhere.url}/api/grants, which is not on the IdP's origin ${idp.url}`,
    );
    expect(asCli(e).hint).toContain("idp_endpoint_origins");
    expect(idp.requests.map((r) => r.url)).toEqual(["/.well-known/openid-configuration"]);
    expect(elsewhere.requests).toEqual([]);
  });

  it("an origin listed in idp_endpoint_origins is followed", async () => {
    const elsewhere = await server((_req, res) => json(res, 200, { data: [] }));
    const idp = await idpWithGrantsAt(() => `${elsewhere.url}/api/grants`);
    const ctx = await loggedInAt(idp.url, { idpEndpointOrigins: [elsewhere.url] });
    const client = await grantsClient(ctx);
    await client.list();
    expect(elsewhere.requests.map((r) => r.url)).toEqual(["/api/grants"]);
    expect(elsewhere.requests[0]?.authorization).toMatch(/^Bearer /);
  });

  it("endpointRefusal: origin, scheme, credentials", () => {
    const base = "https://id.example.com";
    expect(endpointRefusal(base, "https://id.example.com/api/grants")).toBeUndefined();
    expect(endpointRefusal(base, "https://id.example.com:443/x")).toBeUndefined();
    expect(endpointRefusal(base, "https://id.example.com:8443/x")).toMatch(/not on the IdP's origin/);
    expect(endpointRefusal(base, "http://id.example.com/x")).toMatch(/not on the IdP's origin/);
    expect(endpointRefusal(base, "https://evil.example/x")).toMatch(/not on the IdP's origin/);
    expect(endpointRefusal(base, "https://evil.example/x", ["https://evil.example"])).toBeUndefined();
    expect(endpointRefusal(base, "http://evil.example/x", ["http://evil.example"])).toMatch(/plain http/);
    expect(endpointRefusal(base, "https://u:p@id.example.com/x")).toMatch(/credentials/);
    expect(endpointRefusal(base, "file:///etc/passwd")).toMatch(/not an http\(s\) URL/);
    expect(endpointRefusal(base, "not a url")).toMatch(/not a URL/);
    expect(endpointRefusal("http://127.0.0.1:8080", "http://127.0.0.1:8080/api")).toBeUndefined();
  });

  it("every endpoint field is checked, the agents default is on the IdP", () => {
    const base = "https://id.example.com";
    for (const field of [
      "jwks_uri",
      "token_endpoint",
      "ddisa_auth_challenge_endpoint",
      "ddisa_agent_authenticate_endpoint",
      "openape_delegations_endpoint",
      "openape_agents_endpoint",
    ]) {
      const doc = { issuer: base, [field]: "https://evil.example/x" } as never;
      expect(() => endpointsFrom(base, doc), field).toThrow(new RegExp(`advertises ${field} =`));
    }
    // A hostile issuer does not move the default agents endpoint.
    expect(endpointsFrom(base, { issuer: "https://evil.example" } as never).agentsEndpoint).toBe(
      `${base}/api/agents`,
    );
  });

  it("idp_endpoint_origins takes https origins (http only on loopback) and nothing else", async () => {
    const parse = (v: string) => parseUserConfig(`idp_endpoint_origins = ${v}\n`, "config.toml");
    expect(
      (await parse('["https://API.example.com:443", "http://127.0.0.1:9000"]')).idpEndpointOrigins,
    ).toEqual(["https://api.example.com", "http://127.0.0.1:9000"]);
    for (const bad of ['"https://a.example"', '["http://a.example"]', '["https://a.example/path"]', "[1]"]) {
      await expect(parse(bad), bad).rejects.toThrow(/idp_endpoint_origins/);
    }
  });
});

describe("no request in the clear to a non-loopback host", () => {
  it("a bearer token to http://<non-loopback> is refused before anything is sent", async () => {
    let calls = 0;
    const ctx = fakeContext({
      home,
      http: (async () => {
        calls++;
        throw new Error("must not be called");
      }) as Fetch,
    });
    const e = await request(ctx, { url: "http://192.0.2.10/api/grants", token: "secret" }).catch((x) => x);
    expect(e.failure).toBe("insecure_url");
    expect(asCli(e).exitCode).toBe(ExitCode.CONFIG);
    expect(e.message).toBe(
      "refusing to send the session token to 192.0.2.10 over plain http (allowed only on a loopback address)",
    );
    expect(calls).toBe(0);
  });

  it("the node:http transport itself refuses credentials over plain http to a non-loopback host", async () => {
    await expect(
      nodeFetch("http://192.0.2.10/api/grants", { headers: { Authorization: "Bearer secret" } }),
    ).rejects.toThrow("refusing to send credentials over plain http to 192.0.2.10");
    // Loopback is fine: the request reaches the server, token and all.
    const s = await server((_req, res) => json(res, 200, {}));
    expect((await nodeFetch(`${s.url}/x`, { headers: { authorization: "Bearer t" } })).status).toBe(200);
    expect(s.requests[0]?.authorization).toBe("Bearer t");
  });

  it("insecureUrlRefusal: https anywhere, http only on loopback", () => {
    expect(insecureUrlRefusal("https://id.example.com/x")).toBeUndefined();
    expect(insecureUrlRefusal("http://127.0.0.1:1/x")).toBeUndefined();
    expect(insecureUrlRefusal("http://[::1]:1/x")).toBeUndefined();
    expect(insecureUrlRefusal("http://localhost/x")).toBeUndefined();
    expect(insecureUrlRefusal("http://id.example.com/x")).toMatch(/plain http/);
    expect(insecureUrlRefusal("http://127.0.0.1.evil.example/x")).toMatch(/plain http/);
    expect(insecureUrlRefusal("ftp://id.example.com/x")).toMatch(/not an http\(s\) URL/);
  });
});

describe("answers are bounded while reading", () => {
  const get = async (mode: Parameters<typeof startHostileServer>[0], env: Record<string, string> = {}) => {
    const s = await server(mode);
    const ctx = fakeContext({ home, http: realHttp, env });
    const e = await request(ctx, { url: `${s.url}/x` }).catch((x: unknown) => x);
    await s.settled();
    return { e: e as ClientError, sent: s.bytesSent() };
  };

  it("an endless body fails as soon as it passes 16 MiB, long before the deadline", async () => {
    const { e, sent } = await get("endless", { APES_HTTP_TIMEOUT_MS: "25000" });
    expect(e.failure).toBe("answer_too_large");
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toMatch(
      /^IdP at http:\/\/127\.0\.0\.1:\d+ sent an answer larger than 16 MiB: refused$/,
    );
    // The cap plus what the loopback socket buffers held.
    expect(sent).toBeLessThan(16 * 1024 * 1024 + 64 * 1024 * 1024);
  });

  it("a Content-Length above the cap is refused before reading", async () => {
    const { e } = await get("huge-length", { APES_HTTP_TIMEOUT_MS: "25000" });
    expect(e.message).toMatch(/larger than 16 MiB: refused/);
  });

  it("a body trickling in ends at the request's total deadline", async () => {
    const { e } = await get("trickle", { APES_HTTP_TIMEOUT_MS: "500" });
    expect(e.failure).toBe("idp_unreachable");
    expect(asCli(e).exitCode).toBe(ExitCode.UNAVAILABLE);
    expect(e.message).toMatch(/unreachable \(no answer within 1 s\)/);
  });
});

describe("IdP text in errors is escaped and bounded", () => {
  const hostile = `\x1b[2J\x1b[Hall good${"A".repeat(5 * 1024 * 1024)}`;

  it.each([
    ["detail", { type: "https://openape.org/errors/x", title: "t", status: 400, detail: hostile }],
    ["error_description", { error: "invalid_grant", error_description: hostile }],
    ["title", { type: "x", title: hostile, status: 400 }],
  ])("a problem %s with escapes and 5 MB of text", (_field, body) => {
    for (const status of [400, 401, 403, 404, 429, 500]) {
      const e = errorFor(status, body, "https://id.example.com/api/grants");
      expect(e.message).not.toMatch(/\x1b/);
      expect(e.message).toContain("\\x1b[2J\\x1b[Hall good");
      expect(e.message.length).toBeLessThan(IDP_TEXT_MAX + 200);
      expect(e.message).toMatch(/… \(\d+ more characters\)/);
    }
  });

  it("Retry-After is escaped too", () => {
    const e = errorFor(429, {}, "https://id.example.com/x", new Headers({ "retry-after": "5\x1b[2J" }));
    expect(e.retryAfter).toBe("5\\x1b[2J");
    expect(asCli(e).hint).toBe("try again in 5\\x1b[2J s");
  });

  it("the CLI prints such an error escaped and cut", async () => {
    const s = await server((_req, res) =>
      json(res, 500, {
        type: "https://openape.org/errors/internal",
        title: "t",
        status: 500,
        detail: hostile,
      }),
    );
    const { runCli } = await import("../../cli/program.ts");
    const ctx = await loggedInAt(s.url);
    const { env, http, clock, paths, config, io } = ctx;
    const code = await runCli(["grants", "list"], { env, http, clock, paths, config, io });
    const out = ctx.stderr.text;
    expect(code).toBe(ExitCode.UNAVAILABLE);
    expect(out).not.toMatch(/\x1b/);
    expect(out).toContain("\\x1b[2J\\x1b[Hall good");
    expect(out.length).toBeLessThan(2000);
  });
});
