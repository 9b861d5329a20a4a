import { randomUUID, sign } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSchemas } from "../../protocol/schemas.ts";
import { api, type Name, startWorld, USERS, type World } from "../helpers/idp.ts";

const schemas = loadSchemas();
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt";

const claimsOf = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8"));

function form(params: Record<string, string>) {
  return new URLSearchParams(params).toString();
}

describe("idp delegations and token exchange", () => {
  let w: World;
  let tokenEndpoint: string;
  beforeAll(async () => {
    w = await startWorld();
    tokenEndpoint = w.discovery.token_endpoint!;
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  const delegate = async (who: Name, body: Record<string, unknown>) => w.as(who).post(w.delegations, body);

  const exchange = (params: Record<string, string>, asForm = true) =>
    asForm
      ? api(w.idp.url).post(tokenEndpoint, form(params), {
          "content-type": "application/x-www-form-urlencoded",
        })
      : api(w.idp.url).post(tokenEndpoint, params);

  it("refuses control, bidi and invisible characters in audience and scopes, naming the field", async () => {
    const bad = await delegate("alice", { delegate: USERS.bot, audience: "sp.example.com\u202e" });
    expect(bad.status).toBe(400);
    expect(bad.body.detail).toMatch(/^audience contains control/);
    const scopes = await delegate("alice", {
      delegate: USERS.bot,
      audience: "sp",
      scopes: ["read", "\x1b[2Jall"],
    });
    expect(scopes.status).toBe(400);
    expect(scopes.body.detail).toMatch(/^scopes\[1\] contains control/);
  });

  it("a human creates an approved delegation; both parties see it; validate", async () => {
    const r = await delegate("alice", {
      delegate: USERS.bot,
      audience: "sp.example.com",
      scopes: ["read"],
      grant_type: "always",
    });
    expect(r.status).toBe(201);
    schemas.assert("delegation", r.body);
    expect(r.body).toMatchObject({ type: "delegation", status: "approved", decided_by: USERS.alice });
    expect(r.body.request).toMatchObject({
      delegator: USERS.alice,
      delegate: USERS.bot,
      audience: "sp.example.com",
    });
    const id = r.body.id;
    const asDelegator = await w.as("alice").get(`${w.delegations}?role=delegator`);
    expect(asDelegator.body.data.map((g: { id: string }) => g.id)).toContain(id);
    const asDelegate = await w.as("bot").get(`${w.delegations}?role=delegate`);
    expect(asDelegate.body.data.map((g: { id: string }) => g.id)).toContain(id);
    expect((await w.as("bot").get(`${w.delegations}?role=delegator`)).body.data).toEqual([]);
    expect((await w.as("dave").get(`${w.delegations}/${id}`)).status).toBe(404);
    const ok = await w
      .as("bot")
      .post(`${w.delegations}/${id}/validate`, { delegate: USERS.bot, audience: "sp.example.com" });
    expect(ok.body).toMatchObject({ valid: true, scopes: ["read"] });
    const wrongAud = await w
      .as("bot")
      .post(`${w.delegations}/${id}/validate`, { delegate: USERS.bot, audience: "other" });
    expect(wrongAud.body.valid).toBe(false);
  });

  it("agents and delegated tokens cannot create delegations", async () => {
    expect((await delegate("bot", { delegate: USERS.alice, audience: "*" })).status).toBe(403);
    const d = await delegate("alice", { delegate: USERS.bot, audience: "apes-cli", grant_type: "always" });
    const t = await exchange({
      grant_type: EXCHANGE,
      actor_token: w.tokens.bot,
      actor_token_type: JWT_TYPE,
      delegation_grant_id: d.body.id,
    });
    expect(t.status).toBe(200);
    const delegated = t.body.access_token as string;
    const r = await api(w.idp.url, delegated).post(w.delegations, { delegate: USERS.bob, audience: "*" });
    expect(r.status).toBe(403);
    schemas.assert("error", r.body);
  });

  it("a '*' delegation never yields a token for the IdP's own APIs", async () => {
    const d = await delegate("alice", { delegate: USERS.bot, audience: "*", grant_type: "always" });
    const base = { grant_type: EXCHANGE, actor_token: w.tokens.bot, delegation_grant_id: d.body.id };
    const r = await exchange({ ...base, audience: "apes-cli" });
    expect(r.status).toBe(400);
    expect(r.body.error).toBe("invalid_target");
    expect((await exchange({ ...base, audience: "any.example.com" })).status).toBe(200);
    // "*" with no audience asked for is refused: the token must name its audience.
    expect((await exchange(base)).body.error).toBe("invalid_request");
  });

  it("refuses bad delegation bodies", async () => {
    expect((await delegate("alice", { delegate: "nobody@example.com", audience: "*" })).status).toBe(400);
    expect((await delegate("alice", { delegate: USERS.alice, audience: "*" })).status).toBe(400);
    expect((await delegate("alice", { delegate: USERS.bot })).status).toBe(400);
    expect(
      (await delegate("alice", { delegate: USERS.bot, audience: "*", grant_type: "timed" })).status,
    ).toBe(400);
    expect(
      (await delegate("alice", { delegate: USERS.bot, audience: "*", delegator: USERS.bob })).status,
    ).toBe(403);
    expect((await delegate("alice", { delegate: USERS.bot, audience: "*", extra: 1 })).status).toBe(400);
  });

  it("token exchange without subject_token: sub = delegator, act.sub = delegate (form and JSON)", async () => {
    const d = await delegate("alice", {
      delegate: USERS.bot,
      audience: "sp.example.com",
      scopes: ["a", "b"],
      grant_type: "always",
    });
    for (const asForm of [true, false]) {
      const t = await exchange(
        {
          grant_type: EXCHANGE,
          actor_token: w.tokens.bot,
          actor_token_type: JWT_TYPE,
          delegation_grant_id: d.body.id,
          audience: "sp.example.com",
        },
        asForm,
      );
      expect(t.status, JSON.stringify(t.body)).toBe(200);
      expect(t.body).toMatchObject({ issued_token_type: JWT_TYPE, token_type: "Bearer" });
      expect(t.body.expires_in).toBeGreaterThan(0);
      const c = claimsOf(t.body.access_token);
      schemas.assert("delegated-token-claims", c);
      expect(c).toMatchObject({
        iss: w.idp.issuer,
        sub: USERS.alice,
        aud: "sp.example.com",
        act: { sub: USERS.bot },
        delegation_grant: d.body.id,
        scope: ["a", "b"],
      });
    }
  });

  it("a subject_token must name the delegator", async () => {
    const d = await delegate("alice", {
      delegate: USERS.bot,
      audience: "sp.example.com",
      grant_type: "always",
    });
    const base = {
      grant_type: EXCHANGE,
      actor_token: w.tokens.bot,
      delegation_grant_id: d.body.id,
      audience: "sp.example.com",
    };
    expect((await exchange({ ...base, subject_token: w.tokens.alice })).status).toBe(200);
    const bad = await exchange({ ...base, subject_token: w.tokens.bob });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toBe("invalid_grant");
  });

  it("refuses the wrong actor, audience, revoked and used delegations", async () => {
    const d = await delegate("alice", {
      delegate: USERS.bot,
      audience: "sp.example.com",
      grant_type: "once",
    });
    const base = { grant_type: EXCHANGE, delegation_grant_id: d.body.id, audience: "sp.example.com" };
    const wrongActor = await exchange({ ...base, actor_token: w.tokens.bot2 });
    expect(wrongActor.body.error).toBe("invalid_grant");
    const wrongAud = await exchange({ ...base, actor_token: w.tokens.bot, audience: "evil.example.com" });
    expect(wrongAud.body.error).toBe("invalid_target");
    const forged = `${w.tokens.bot.slice(0, -4)}AAAA`;
    expect((await exchange({ ...base, actor_token: forged })).body.error).toBe("invalid_grant");
    // once: the first exchange uses it
    expect((await exchange({ ...base, actor_token: w.tokens.bot })).status).toBe(200);
    expect((await exchange({ ...base, actor_token: w.tokens.bot })).body.error).toBe("invalid_grant");
    expect((await w.as("alice").get(`${w.delegations}/${d.body.id}`)).body.status).toBe("used");

    const d2 = await delegate("alice", { delegate: USERS.bot, audience: "*", grant_type: "always" });
    expect((await w.as("bot").delete(`${w.delegations}/${d2.body.id}`)).status).toBe(403);
    const revoked = await w.as("alice").delete(`${w.delegations}/${d2.body.id}`);
    expect(revoked.body.status).toBe("revoked");
    const after = await exchange({
      grant_type: EXCHANGE,
      actor_token: w.tokens.bot,
      delegation_grant_id: d2.body.id,
      audience: "x",
    });
    expect(after.body.error).toBe("invalid_grant");
  });

  it("OAuth errors for malformed token requests", async () => {
    expect((await exchange({})).body.error).toBe("invalid_request");
    expect((await exchange({ grant_type: "password" })).body.error).toBe("unsupported_grant_type");
    expect((await exchange({ grant_type: EXCHANGE, actor_token: w.tokens.bot })).body.error).toBe(
      "invalid_request",
    );
    expect((await exchange({ grant_type: EXCHANGE, nonsense: "1" })).body.error).toBe("invalid_request");
    const r = await api(w.idp.url).post(tokenEndpoint, "{bad", { "content-type": "application/json" });
    expect(r.status).toBe(400);
    expect(r.body.error).toBe("invalid_request");
  });

  describe("client_credentials with an Ed25519 client assertion", () => {
    const assertion = (who: Name, overrides: Record<string, unknown> = {}) => {
      const now = Math.floor(Date.now() / 1000);
      const header = Buffer.from(JSON.stringify({ alg: "EdDSA", typ: "JWT", kid: "k" })).toString(
        "base64url",
      );
      const payload = Buffer.from(
        JSON.stringify({
          iss: USERS[who],
          sub: USERS[who],
          aud: tokenEndpoint,
          iat: now,
          exp: now + 60,
          jti: randomUUID(),
          ...overrides,
        }),
      ).toString("base64url");
      const sig = sign(null, Buffer.from(`${header}.${payload}`), w.keys[who].privateKey).toString(
        "base64url",
      );
      return `${header}.${payload}.${sig}`;
    };
    const cc = (a: string, extra: Record<string, string> = {}) =>
      exchange({
        grant_type: "client_credentials",
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        client_assertion: a,
        ...extra,
      });

    it("exchanges a delegation; the jti is single use", async () => {
      const d = await delegate("alice", {
        delegate: USERS.bot,
        audience: "sp.example.com",
        grant_type: "always",
      });
      const a = assertion("bot");
      const t = await cc(a, { delegation_grant: d.body.id, audience: "sp.example.com" });
      expect(t.status, JSON.stringify(t.body)).toBe(200);
      expect(claimsOf(t.body.access_token)).toMatchObject({ sub: USERS.alice, act: { sub: USERS.bot } });
      const replay = await cc(a, { delegation_grant: d.body.id, audience: "sp.example.com" });
      expect(replay.status).toBe(401);
      expect(replay.body.error).toBe("invalid_client");
    });

    it("without a delegation returns the identity's own session token", async () => {
      const t = await cc(assertion("bot"));
      expect(t.status).toBe(200);
      const me = await api(w.idp.url, t.body.access_token).get("/api/me");
      expect(me.body.email).toBe(USERS.bot);
    });

    it("refuses wrong audience, long lifetime, someone else's key, sub != iss", async () => {
      const now = Math.floor(Date.now() / 1000);
      expect((await cc(assertion("bot", { aud: "https://elsewhere" }))).status).toBe(401);
      expect((await cc(assertion("bot", { exp: now + 3600 }))).status).toBe(401);
      expect((await cc(assertion("bot", { sub: USERS.alice }))).status).toBe(401);
      const stolen = assertion("bot2", { iss: USERS.bot, sub: USERS.bot });
      expect((await cc(stolen)).status).toBe(401);
      expect((await cc(assertion("bot", { exp: now - 10 }))).status).toBe(401);
    });
  });
});
