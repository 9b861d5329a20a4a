import { createHash, generateKeyPairSync } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { beforeEach, describe, expect, it } from "vitest";
import type { DdisaRecord } from "../../protocol/ddisa.ts";
import { signJwt } from "../../protocol/jwt.ts";
import type { Bytes, Reply } from "../../server/http.ts";
import { type SpCall, type SpConfig, SpLogin } from "../../sp/login.ts";

// The SP module's handlers in process (sp/login.ts) over injected DNS and HTTP: the IdP here is a
// few lines that sign what a test asks for, so each test can make the IdP misbehave in one way.
// The real flow (dnsmasq, dist/apes idp serve, chromium) is test/e2e/sp-login.test.ts.

const ORIGIN = "http://127.0.0.1:8090";
const ISS = "https://id.example.com";
const key = generateKeyPairSync("ed25519");
const jwk = { ...key.publicKey.export({ format: "jwk" }), kid: "k1", alg: "EdDSA", use: "sig" };

interface World {
  sp: SpLogin;
  records: Record<string, DdisaRecord | undefined>;
  /** What the fake token endpoint signs, from the authorize request's nonce. */
  claims: (nonce: string) => Record<string, unknown>;
  discoveryIssuer: string;
  tokenCalls: URLSearchParams[];
  fetched: string[];
  challenge?: string;
  /** The JWKS answers 500 from now on. */
  jwksDown?: boolean;
}

let w: World;

function world(config: Partial<SpConfig> = {}): World {
  const me = {
    records: { "example.com": { version: "ddisa1", idp: ISS, priority: 10, mode: "open" } },
    claims: (nonce) => {
      const now = Math.floor(Date.now() / 1000);
      return {
        iss: ISS,
        sub: "alice@example.com",
        aud: "hello",
        iat: now,
        exp: now + 300,
        nonce,
        jti: "j",
        act: "human",
      };
    },
    discoveryIssuer: ISS,
    tokenCalls: [],
    fetched: [],
  } as Omit<World, "sp"> as World;
  let nonce = "";
  me.sp = new SpLogin(
    {
      clientId: "hello",
      origin: ORIGIN,
      users: ["alice@example.com"],
      admins: ["root@example.com"],
      ...config,
    },
    {
      resolve: async (domain) => ({ selected: me.records[domain] }),
      getJson: async (url) => {
        me.fetched.push(url);
        if (url.endsWith("/.well-known/openid-configuration"))
          return {
            status: 200,
            body: {
              issuer: me.discoveryIssuer,
              jwks_uri: `${ISS}/jwks`,
              authorization_endpoint: `${ISS}/authorize`,
              token_endpoint: `${ISS}/token`,
            },
          };
        if (url === `${ISS}/jwks`)
          return me.jwksDown ? { status: 500, body: undefined } : { status: 200, body: { keys: [jwk] } };
        return { status: 404, body: undefined };
      },
      postForm: async (_url, form) => {
        me.tokenCalls.push(form);
        const verifier = form.get("code_verifier") ?? "";
        if (createHash("sha256").update(verifier).digest("base64url") !== me.challenge)
          return { status: 400, body: { error: "invalid_grant" } };
        return {
          status: 200,
          body: { assertion: signJwt(me.claims(nonce), { kid: "k1", privateKey: key.privateKey }) },
        };
      },
    },
  );
  const start = me.sp.handle.bind(me.sp);
  // Remember the authorize request's nonce and challenge, as the IdP would.
  me.sp.handle = async (c) => {
    const r = await start(c);
    const m = /url=([^"]+)"/.exec(text(r));
    if (m) {
      const q = new URL(m[1]!.replaceAll("&amp;", "&")).searchParams;
      nonce = q.get("nonce")!;
      me.challenge = q.get("code_challenge")!;
    }
    return r;
  };
  return me;
}

function call(
  method: string,
  target: string,
  o: { cookie?: string; body?: string; headers?: Record<string, string> } = {},
): SpCall {
  const u = new URL(target, ORIGIN);
  const body = o.body === undefined ? [] : [Buffer.from(o.body)];
  const req = Object.assign(Readable.from(body), {
    headers: {
      ...(o.body !== undefined ? { "content-length": String(Buffer.byteLength(o.body)) } : {}),
      ...(o.cookie ? { cookie: o.cookie } : {}),
      ...o.headers,
    },
  }) as unknown as IncomingMessage;
  return { method, path: u.pathname, query: u.searchParams, req, ip: "127.0.0.1" };
}

const text = (r: Reply) => (r.body ? (r.body as Bytes).data.toString("utf8") : "");
const cookieOf = (r: Reply) => /^(__Host-sp=[^;]*)/.exec(r.headers?.["set-cookie"] ?? "")?.[1];
const sameOrigin = { "sec-fetch-site": "same-origin", origin: ORIGIN };

/** POST the email; the reply (the continue page), the transaction cookie and the authorize URL. */
async function start(email = "alice@example.com") {
  const r = await w.sp.handle(
    call("POST", "/auth/login", { body: `email=${encodeURIComponent(email)}`, headers: sameOrigin }),
  );
  const m = /url=([^"]+)"/.exec(text(r));
  const authorize = m ? new URL(m[1]!.replaceAll("&amp;", "&")) : undefined;
  return { r, cookie: cookieOf(r), authorize };
}

async function signIn(email = "alice@example.com") {
  const s = await start(email);
  const state = s.authorize!.searchParams.get("state")!;
  const back = await w.sp.handle(
    call("GET", `/auth/callback?code=c0de&state=${state}`, { cookie: s.cookie! }),
  );
  return { ...s, state, back };
}

beforeEach(() => {
  w = world();
});

describe("the SP's sign-in in process", () => {
  it("email -> record -> discovery -> authorize (S256, state, nonce, login_hint) -> code -> session", async () => {
    const s = await start();
    expect(s.r.status).toBe(200);
    expect(s.cookie).toMatch(/^__Host-sp=t\.[A-Za-z0-9_-]{43}$/);
    expect(s.r.headers!["set-cookie"]).toMatch(/HttpOnly; SameSite=Lax/);
    const q = s.authorize!.searchParams;
    expect(s.authorize!.origin + s.authorize!.pathname).toBe(`${ISS}/authorize`);
    expect(Object.fromEntries(q)).toMatchObject({
      response_type: "code",
      client_id: "hello",
      redirect_uri: `${ORIGIN}/auth/callback`,
      code_challenge_method: "S256",
      login_hint: "alice@example.com",
    });
    expect(q.get("code_verifier")).toBeNull();
    const back = await w.sp.handle(
      call("GET", `/auth/callback?code=c0de&state=${q.get("state")}`, { cookie: s.cookie! }),
    );
    expect(back.status).toBe(303);
    expect(back.headers!.location).toBe("/");
    const session = cookieOf(back)!;
    expect(session).toMatch(/^__Host-sp=s\./);
    expect(w.sp.session({ cookie: session })).toMatchObject({
      email: "alice@example.com",
      act: "human",
      role: "user",
      issuer: ISS,
    });
    // The verifier went to the token endpoint only, with this SP's client_id and redirect_uri.
    expect(Object.fromEntries(w.tokenCalls[0]!)).toMatchObject({
      grant_type: "authorization_code",
      code: "c0de",
      client_id: "hello",
      redirect_uri: `${ORIGIN}/auth/callback`,
    });
  });

  it("the sign-in page sends someone signed in on to the home path", async () => {
    const s = await signIn();
    const r = await w.sp.handle(
      call("GET", "/auth/login?return_to=https://evil.example", { cookie: cookieOf(s.back)! }),
    );
    expect(r.status).toBe(303);
    expect(r.headers!.location).toBe("/");
    expect((await w.sp.handle(call("GET", "/auth/login"))).status).toBe(200);
  });

  it("the callback replayed is refused (the transaction is spent), and a session cookie is left alone", async () => {
    const s = await signIn();
    const session = cookieOf(s.back)!;
    const again = await w.sp.handle(
      call("GET", `/auth/callback?code=c0de&state=${s.state}`, { cookie: s.cookie! }),
    );
    expect(again.status).toBe(400);
    expect(text(again)).toContain("already used");
    const withSession = await w.sp.handle(
      call("GET", `/auth/callback?code=c0de&state=${s.state}`, { cookie: session }),
    );
    expect(withSession.status).toBe(400);
    expect(withSession.headers?.["set-cookie"]).toBeUndefined();
    expect(w.tokenCalls).toHaveLength(1);
  });

  it("a wrong state is refused without a code exchange, and spends the transaction", async () => {
    const s = await start();
    const bad = await w.sp.handle(
      call("GET", `/auth/callback?code=c0de&state=${"A".repeat(43)}`, { cookie: s.cookie! }),
    );
    expect(bad.status).toBe(400);
    const good = s.authorize!.searchParams.get("state");
    const late = await w.sp.handle(
      call("GET", `/auth/callback?code=c0de&state=${good}`, { cookie: s.cookie! }),
    );
    expect(late.status).toBe(400);
    expect(w.tokenCalls).toHaveLength(0);
  });

  it("two state parameters are refused", async () => {
    const s = await start();
    const st = s.authorize!.searchParams.get("state");
    const r = await w.sp.handle(
      call("GET", `/auth/callback?code=c&state=${st}&state=${st}`, { cookie: s.cookie! }),
    );
    expect(r.status).toBe(400);
  });

  it("an iss parameter naming another IdP is refused (RFC 9207)", async () => {
    const s = await start();
    const st = s.authorize!.searchParams.get("state");
    const r = await w.sp.handle(
      call("GET", `/auth/callback?code=c&state=${st}&iss=https%3A%2F%2Fevil.example`, { cookie: s.cookie! }),
    );
    expect(r.status).toBe(400);
    expect(w.tokenCalls).toHaveLength(0);
  });

  it("an assertion the checks refuse makes no session (wrong nonce; another domain's sub)", async () => {
    w.claims = (nonce) => ({ ...world().claims(nonce), nonce: "someone-else's" });
    const a = await signIn();
    expect(a.back.status).toBe(401);
    expect(text(a.back)).toContain("belongs to another sign-in");
    expect(cookieOf(a.back)).toBe("__Host-sp=");
    w.claims = (nonce) => ({ ...world().claims(nonce), sub: "mallory@evil.example" });
    const b = await signIn();
    expect(b.back.status).toBe(401);
    expect(text(b.back)).toContain("domain that does not name it");
  });

  it("discovery naming another issuer than the record's idp: no sign-in starts", async () => {
    w.discoveryIssuer = "https://evil.example";
    const s = await start();
    expect(s.r.status).toBe(502);
    expect(s.cookie).toBeUndefined();
  });

  it("mode=deny is refused before any request to the IdP", async () => {
    w.records["deny.example"] = { version: "ddisa1", idp: ISS, priority: 10, mode: "deny" };
    const s = await start("dora@deny.example");
    expect(s.r.status).toBe(403);
    expect(text(s.r)).toContain("mode=deny");
    expect(w.fetched).toEqual([]);
  });

  it("allowlist-user: a listed email starts, but the verified sub must be listed too", async () => {
    w.records["example.com"] = { version: "ddisa1", idp: ISS, priority: 10, mode: "allowlist-user" };
    expect((await start("stranger@example.com")).r.status).toBe(403);
    w.claims = (nonce) => ({ ...world().claims(nonce), sub: "stranger@example.com" });
    const s = await signIn("alice@example.com");
    expect(s.back.status).toBe(403);
    expect(text(s.back)).toContain("you are not on this service");
  });

  it("allowlist-admin: an admin signs in with role admin", async () => {
    w.records["example.com"] = { version: "ddisa1", idp: ISS, priority: 10, mode: "allowlist-admin" };
    w.claims = (nonce) => ({ ...world().claims(nonce), sub: "root@example.com" });
    const s = await signIn("root@example.com");
    expect(w.sp.session({ cookie: cookieOf(s.back)! })).toMatchObject({ role: "admin" });
  });

  it("no DDISA record, an IdP outside the pin list, a bad email: the form again with why", async () => {
    expect((await start("x@nowhere.example")).r.status).toBe(403);
    expect((await start("not-an-email")).r.status).toBe(400);
    w = world({ idps: ["https://other-idp.example"] });
    const s = await start();
    expect(s.r.status).toBe(403);
    expect(w.fetched).toEqual([]);
  });

  it("a sign-in posted from another site is refused", async () => {
    const r = await w.sp.handle(
      call("POST", "/auth/login", {
        body: "email=alice%40example.com",
        headers: { "sec-fetch-site": "cross-site", origin: "https://evil.example" },
      }),
    );
    expect(r.status).toBe(403);
    const noHeaders = await w.sp.handle(call("POST", "/auth/login", { body: "email=alice%40example.com" }));
    expect(noHeaders.status).toBe(403);
  });

  it("the IdP's error text is shown with control characters made visible, never raw", async () => {
    const s = await start();
    const st = s.authorize!.searchParams.get("state");
    const r = await w.sp.handle(
      call(
        "GET",
        `/auth/callback?state=${st}&error=access_denied&error_description=${encodeURIComponent("\x1b[31mred\u202e<b>")}`,
        {
          cookie: s.cookie!,
        },
      ),
    );
    expect(r.status).toBe(403);
    const body = text(r);
    expect(body).not.toContain("\x1b");
    expect(body).not.toContain("\u202e");
    expect(body).not.toContain("<b>");
    expect(body).toContain("access_denied");
  });

  it("the code exchange refused by the IdP (PKCE mismatch) makes no session", async () => {
    const s = await start();
    w.challenge = "not-it";
    const st = s.authorize!.searchParams.get("state");
    const r = await w.sp.handle(call("GET", `/auth/callback?code=c&state=${st}`, { cookie: s.cookie! }));
    expect(r.status).toBe(502);
    expect(text(r)).toContain("invalid_grant");
  });

  it("sign out needs the session's CSRF token and same origin", async () => {
    const s = await signIn();
    const cookie = cookieOf(s.back)!;
    const session = w.sp.session({ cookie })!;
    const forged = await w.sp.handle(call("POST", "/auth/logout", { cookie, body: "", headers: sameOrigin }));
    expect(forged.status).toBe(403);
    expect(w.sp.session({ cookie })).toBeDefined();
    const ok = await w.sp.handle(
      call("POST", "/auth/logout", { cookie, body: `csrf_token=${w.sp.csrf(session)}`, headers: sameOrigin }),
    );
    expect(ok.status).toBe(303);
    expect(ok.headers!.location).toBe("/auth/login");
    expect(w.sp.session({ cookie })).toBeUndefined();
  });

  it("the IdP's keys unavailable at the callback: a page saying so, no session", async () => {
    const s = await start();
    w.jwksDown = true;
    const st = s.authorize!.searchParams.get("state");
    const r = await w.sp.handle(call("GET", `/auth/callback?code=c&state=${st}`, { cookie: s.cookie! }));
    expect(r.status).toBe(502);
    expect(text(r)).toContain("signing keys could not be fetched");
    expect(cookieOf(r)).toBe("__Host-sp=");
  });

  it("HEAD on the callback does not spend the sign-in", async () => {
    const s = await start();
    const st = s.authorize!.searchParams.get("state");
    const head = await w.sp.handle(
      call("HEAD", `/auth/callback?code=c0de&state=${st}`, { cookie: s.cookie! }),
    );
    expect(head.status).toBe(404);
    const get = await w.sp.handle(call("GET", `/auth/callback?code=c0de&state=${st}`, { cookie: s.cookie! }));
    expect(get.status).toBe(303);
  });

  it("the configuration is checked: origin, client id, lists", () => {
    expect(() => world({ origin: "http://app.example.com" })).toThrow(/https/);
    expect(() => world({ origin: "https://app.example.com/path" })).toThrow(/origin/);
    expect(() => world({ clientId: "a b" })).toThrow(/clientId/);
    expect(() => world({ admins: ["nobody"] })).toThrow(/admins/);
  });
});
