import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { s256 } from "../../idp/oauth/pkce.ts";
import type { AuthCodeRecord, RefreshTokenRecord, Store } from "../../idp/store/types.ts";
import { decodeJwt, publicKeyFromJwk, verifyJwt } from "../../protocol/jwt.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import {
  addUser,
  api,
  discovery,
  type IdpHandle,
  type Json,
  openTestStore,
  runApes,
  startIdp,
} from "../helpers/idp.ts";

/**
 * The OAuth grants of the real `dist/apes idp serve`: authorization code + PKCE, refresh rotation and
 * reuse, device codes, revocation, registered clients. Codes are written into the data dir the way
 * /authorize stores them (another connection, as the admin commands use), so these paths are tested
 * on their own.
 */

const schemas = loadSchemas();
const ALICE = "alice@example.com";
const BOT = "bot+agent@example.com";
const REDIRECT = "http://127.0.0.1:45678/callback";

const b64 = () => randomBytes(32).toString("base64url");
const hash = (v: string) => s256(v); // SHA-256, base64url: the store's secret hash

describe("idp serve: OAuth token endpoint", () => {
  let idp: IdpHandle;
  let store: Store;
  let doc: Record<string, string>;
  let jwks: Json;

  beforeAll(async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-idp-oauth-")), "data");
    await addUser(dataDir, ALICE);
    await addUser(dataDir, "mallory@example.com");
    await addUser(dataDir, BOT, { agent: true, owner: ALICE });
    const r = await runApes([
      "idp",
      "clients",
      "add",
      "sp",
      "--redirect-uri",
      "https://sp.example.com/cb",
      "--data",
      dataDir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    idp = await startIdp({ dataDir });
    store = await openTestStore(dataDir);
    doc = await discovery(idp.url);
    jwks = (await api(idp.url).get("/.well-known/jwks.json")).body;
  });
  afterAll(async () => {
    await store?.close();
    await idp?.stop();
  });

  const token = (body: Record<string, string>, form = false) =>
    form
      ? api(idp.url).post(doc.token_endpoint!, new URLSearchParams(body).toString(), {
          "content-type": "application/x-www-form-urlencoded",
        })
      : api(idp.url).post(doc.token_endpoint!, body);

  const verify = (jwt: string, audience: string) =>
    verifyJwt(jwt, (kid) => publicKeyFromJwk(jwks.keys.find((k: Json) => k.kid === kid)), {
      now: Math.floor(Date.now() / 1000),
      issuer: idp.issuer,
      audience,
    });

  /** A code as /authorize stores it; returns the code and its verifier. */
  const newCode = async (extra: Partial<AuthCodeRecord> = {}) => {
    const code = b64();
    const verifier = b64();
    const now = Math.floor(Date.now() / 1000);
    await store.insertAuthCode({
      codeHash: hash(code),
      clientId: "apes-cli",
      redirectUri: REDIRECT,
      codeChallenge: s256(verifier),
      nonce: "nonce-1",
      sub: ALICE,
      familyId: randomUUID(),
      createdAt: now,
      expiresAt: now + 60,
      ...extra,
    });
    return { code, verifier };
  };
  const exchange = (
    c: { code: string; verifier: string },
    extra: Record<string, string> = {},
    form = false,
  ) =>
    token(
      {
        grant_type: "authorization_code",
        code: c.code,
        code_verifier: c.verifier,
        redirect_uri: REDIRECT,
        client_id: "apes-cli",
        ...extra,
      },
      form,
    );
  const refresh = (rt: string, clientId = "apes-cli") =>
    token({ grant_type: "refresh_token", refresh_token: rt, client_id: clientId });

  it("advertises every OAuth endpoint in discovery (and stays valid against the schema)", () => {
    schemas.assert("openid-configuration-extensions", doc);
    expect(doc).toMatchObject({
      authorization_endpoint: `${idp.url}/authorize`,
      token_endpoint: `${idp.url}/token`,
      revocation_endpoint: `${idp.url}/revoke`,
      device_authorization_endpoint: `${idp.url}/device_authorization`,
      code_challenge_methods_supported: ["S256"],
      response_types_supported: ["code"],
    });
    expect(doc.grant_types_supported).toEqual(
      expect.arrayContaining([
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
      ]),
    );
  });

  it("exchanges a code (JSON and form) for an assertion, an access token and a refresh token", async () => {
    for (const form of [false, true]) {
      const r = await exchange(await newCode(), {}, form);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ token_type: "Bearer", authorization_details: [] });
      expect(r.body.assertion).toBe(r.body.id_token);
      const a = verify(r.body.id_token, "apes-cli");
      expect(a).toMatchObject({ sub: ALICE, aud: "apes-cli", act: "human", nonce: "nonce-1" });
      expect((a.exp as number) - (a.iat as number)).toBeLessThanOrEqual(300);
      expect(typeof a.jti).toBe("string");
      schemas.assert("session-token-claims", decodeJwt(r.body.access_token).payload);
      expect(decodeJwt(r.body.access_token).payload).toMatchObject({
        sub: ALICE,
        aud: "apes-cli",
        act: "human",
      });
      expect(r.body.refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const me = await api(idp.url, r.body.access_token).get("/api/me");
      expect(me.status).toBe(200);
      expect(me.body.email ?? me.body.sub).toBe(ALICE);
    }
  });

  it("a code is single use: a replay fails and revokes the refresh tokens its first use gave", async () => {
    const c = await newCode();
    const first = await exchange(c);
    expect(first.status).toBe(200);
    const again = await exchange(c);
    expect(again).toMatchObject({ status: 400, body: { error: "invalid_grant" } });
    expect((await refresh(first.body.refresh_token)).body.error).toBe("invalid_grant");
  });

  it("of concurrent exchanges of one code exactly one succeeds", async () => {
    const c = await newCode();
    const results = await Promise.all(Array.from({ length: 8 }, () => exchange(c)));
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
  });

  it("refuses a wrong verifier, redirect_uri or client, and such a try burns the code", async () => {
    const cases: [Record<string, string>, string][] = [
      [{ code_verifier: b64() }, "code_verifier"],
      [{ redirect_uri: "http://127.0.0.1:45679/callback" }, "redirect_uri"],
      [{ client_id: "sp", redirect_uri: REDIRECT }, "another client"],
    ];
    for (const [bad, what] of cases) {
      const c = await newCode();
      const r = await exchange(c, bad);
      expect(r.status, what).toBe(400);
      expect(r.body.error).toBe("invalid_grant");
      expect(r.body.error_description).toContain(what);
      expect((await exchange(c)).body.error).toBe("invalid_grant");
    }
  });

  it("refuses an expired code, an unknown one, a missing parameter and an unknown client", async () => {
    const now = Math.floor(Date.now() / 1000);
    const old = await newCode({ createdAt: now - 120, expiresAt: now - 60 });
    expect((await exchange(old)).body.error).toBe("invalid_grant");
    expect((await exchange({ code: b64(), verifier: b64() })).body.error).toBe("invalid_grant");
    expect((await exchange({ code: "not-a-code", verifier: b64() })).body.error).toBe("invalid_grant");
    const c = await newCode();
    expect(
      (
        await token({
          grant_type: "authorization_code",
          code: c.code,
          client_id: "apes-cli",
          redirect_uri: REDIRECT,
        })
      ).body,
    ).toMatchObject({ error: "invalid_request" });
    expect((await exchange(c, { client_id: "nobody" })).status).toBe(401);
    expect(
      (
        await token({
          grant_type: "authorization_code",
          code: c.code,
          code_verifier: c.verifier,
          redirect_uri: REDIRECT,
          client_id: "apes-cli",
          extra: "x",
        })
      ).body.error,
    ).toBe("invalid_request");
  });

  it("a disabled user's code gives nothing", async () => {
    const c = await newCode({ sub: "mallory@example.com" });
    expect(
      (await runApes(["idp", "users", "disable", "mallory@example.com", "--data", idp.dataDir])).code,
    ).toBe(0);
    expect((await exchange(c)).body.error).toBe("invalid_grant");
  });

  it("refresh tokens rotate on every use; reusing a spent one revokes the whole family", async () => {
    const first = await exchange(await newCode());
    const r1 = await refresh(first.body.refresh_token);
    expect(r1.status, JSON.stringify(r1.body)).toBe(200);
    expect(r1.body.refresh_token).not.toBe(first.body.refresh_token);
    expect(decodeJwt(r1.body.access_token).payload).toMatchObject({
      sub: ALICE,
      aud: "apes-cli",
      act: "human",
    });
    const r2 = await refresh(r1.body.refresh_token);
    expect(r2.status).toBe(200);
    // The first token again: a replay. It fails and so does the newest one of its family.
    expect((await refresh(first.body.refresh_token)).body.error).toBe("invalid_grant");
    expect((await refresh(r2.body.refresh_token)).body.error).toBe("invalid_grant");
    expect(idp.logs()).toContain("refresh token reused");
    // Another family (another login) lives on.
    const other = await exchange(await newCode());
    expect((await refresh(other.body.refresh_token)).status).toBe(200);
  });

  it("refresh needs client_id, and the token's own client: another client's use revokes the family", async () => {
    const first = await exchange(await newCode());
    expect(
      (await token({ grant_type: "refresh_token", refresh_token: first.body.refresh_token })).body.error,
    ).toBe("invalid_request");
    expect((await refresh(first.body.refresh_token, "sp")).body.error).toBe("invalid_grant");
    expect((await refresh(first.body.refresh_token)).body.error).toBe("invalid_grant");
  });

  const stored = async (extra: Partial<RefreshTokenRecord>) => {
    const rt = b64();
    const now = Math.floor(Date.now() / 1000);
    await store.insertRefreshToken({
      tokenHash: hash(rt),
      familyId: randomUUID(),
      clientId: "apes-cli",
      sub: BOT,
      act: "agent",
      createdAt: now,
      expiresAt: now + 3600,
      ...extra,
    });
    return rt;
  };

  it("keeps the actor: an agent's refresh stays act agent; a session claiming human for an agent is refused", async () => {
    const r = await refresh(await stored({}));
    expect(r.status).toBe(200);
    expect(decodeJwt(r.body.access_token).payload).toMatchObject({ sub: BOT, act: "agent" });
    expect((await refresh(r.body.refresh_token)).status).toBe(200);
    expect((await refresh(await stored({ act: "human" }))).body.error).toBe("invalid_grant");
  });

  it("a delegated session stays delegated and re-checks its delegation at every refresh", async () => {
    const aliceToken = (await exchange(await newCode())).body.access_token;
    const created = await api(idp.url, aliceToken).post(doc.openape_delegations_endpoint!, {
      delegate: BOT,
      audience: "apes-cli",
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const grantId = created.body.id;
    const rt = await stored({ sub: ALICE, act: "human", actingParty: BOT, delegationGrant: grantId });
    const r = await refresh(rt);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const claims = decodeJwt(r.body.access_token).payload;
    expect(claims).toMatchObject({ sub: ALICE, act: { sub: BOT }, delegation_grant: grantId });
    schemas.assert("delegated-token-claims", claims);
    expect((await api(idp.url, r.body.access_token).get("/api/me")).status).toBe(200);
    expect(
      (await api(idp.url, aliceToken).delete(`${doc.openape_delegations_endpoint}/${grantId}`)).status,
    ).toBe(200);
    expect((await refresh(r.body.refresh_token)).body).toMatchObject({ error: "invalid_grant" });
  });

  it("a registered SP gets the assertion (aud = its client_id) and no refresh token", async () => {
    const c = await newCode({ clientId: "sp", redirectUri: "https://sp.example.com/cb" });
    const r = await exchange(c, { client_id: "sp", redirect_uri: "https://sp.example.com/cb" });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.refresh_token).toBeUndefined();
    expect(verify(r.body.assertion, "sp")).toMatchObject({ aud: "sp", act: "human", nonce: "nonce-1" });
    // Its access token is no key to the IdP's APIs.
    expect((await api(idp.url, r.body.access_token).get("/api/me")).status).toBe(401);
  });

  it("revocation (RFC 7009) ends the refresh token's family; unknown tokens answer 200 too", async () => {
    const first = await exchange(await newCode());
    const r1 = await refresh(first.body.refresh_token);
    const rev = await api(idp.url).post(doc.revocation_endpoint!, {
      token: r1.body.refresh_token,
      token_type_hint: "refresh_token",
      client_id: "apes-cli",
    });
    expect(rev.status).toBe(200);
    expect((await refresh(r1.body.refresh_token)).body.error).toBe("invalid_grant");
    expect(
      (await api(idp.url).post(doc.revocation_endpoint!, { token: b64(), client_id: "apes-cli" })).status,
    ).toBe(200);
    // Another client cannot revoke it.
    const other = await exchange(await newCode());
    await api(idp.url).post(doc.revocation_endpoint!, { token: other.body.refresh_token, client_id: "sp" });
    expect((await refresh(other.body.refresh_token)).status).toBe(200);
  });

  describe("device authorization (RFC 8628)", () => {
    const start = async () => {
      const r = await api(idp.url).post(doc.device_authorization_endpoint!, { client_id: "apes-cli" });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return r.body;
    };
    const poll = (deviceCode: string, clientId = "apes-cli") =>
      token({
        grant_type: "urn:ietf:params:oauth:grant-type:device_code",
        device_code: deviceCode,
        client_id: clientId,
      });
    const userCode = (shown: string) => shown.replace("-", "");

    it("starts with a device code, a short user code, the verification URI and an interval", async () => {
      const d = await start();
      expect(d).toMatchObject({ verification_uri: `${idp.url}/device`, expires_in: 600, interval: 5 });
      expect(d.user_code).toMatch(/^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$/);
      expect(d.verification_uri_complete).toBe(`${idp.url}/device?user_code=${d.user_code}`);
      expect(
        (await api(idp.url).post(doc.device_authorization_endpoint!, { client_id: "nobody" })).status,
      ).toBe(401);
    });

    it("pending, slow_down when polled too fast, tokens once approved, then expired_token", async () => {
      const d = await start();
      expect((await poll(d.device_code)).body.error).toBe("authorization_pending");
      expect((await poll(d.device_code)).body.error).toBe("slow_down");
      expect((await poll(d.device_code, "sp")).body.error).toBe("invalid_grant");
      const now = Math.floor(Date.now() / 1000);
      expect(await store.decideDeviceCode(userCode(d.user_code), "approved", ALICE, now)).toBe(true);
      const r = await poll(d.device_code);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(verify(r.body.id_token, "apes-cli")).toMatchObject({ sub: ALICE, act: "human" });
      expect((await refresh(r.body.refresh_token)).status).toBe(200);
      expect((await poll(d.device_code)).body.error).toBe("expired_token");
    });

    it("access_denied once denied; an unknown device code is expired_token", async () => {
      const d = await start();
      expect(
        await store.decideDeviceCode(userCode(d.user_code), "denied", ALICE, Math.floor(Date.now() / 1000)),
      ).toBe(true);
      expect((await poll(d.device_code)).body.error).toBe("access_denied");
      expect((await poll(b64())).body.error).toBe("expired_token");
    });
  });

  describe("apes idp clients", () => {
    it("adds, lists and removes clients; refuses apes-cli, bad ids and unsafe redirect URIs", async () => {
      const data = ["--data", idp.dataDir];
      expect(
        (
          await runApes([
            "idp",
            "clients",
            "add",
            "troop",
            "--redirect-uri",
            "https://troop.example.com/cb",
            ...data,
          ])
        ).code,
      ).toBe(0);
      const list = await runApes(["--json", "idp", "clients", "list", ...data]);
      expect(JSON.parse(list.stdout)).toEqual(
        expect.arrayContaining([
          { id: "troop", redirect_uris: ["https://troop.example.com/cb"], created_at: expect.any(Number) },
        ]),
      );
      for (const bad of [
        ["apes-cli", "http://127.0.0.1:1/"],
        ["Bad Id", "https://x.example.com/"],
        ["x", "http://x.example.com/cb"],
        ["x", "https://x.example.com/cb#f"],
        ["x", "https://a@x.example.com/cb"],
      ]) {
        const r = await runApes(["idp", "clients", "add", bad[0]!, "--redirect-uri", bad[1]!, ...data]);
        expect(r.code, r.stderr).toBe(2);
      }
      expect(
        (
          await runApes([
            "idp",
            "clients",
            "add",
            "troop",
            "--redirect-uri",
            "https://t.example.com/",
            ...data,
          ])
        ).code,
      ).toBe(1);
      expect((await runApes(["idp", "clients", "remove", "troop", ...data])).code).toBe(0);
      expect((await runApes(["idp", "clients", "remove", "troop", ...data])).code).toBe(1);
    });
  });
});
