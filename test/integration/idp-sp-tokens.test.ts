import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSchemas } from "../../protocol/schemas.ts";
import { api, runApes, startWorld, USERS, type World } from "../helpers/idp.ts";

/**
 * Tokens for an SP audience (the troop's): RFC 8693 exchange of one's own session token, the SP
 * claims (owner, approvers, rev) on it and on delegated tokens, and the public revocation feed whose
 * opaque handles those `rev` claims name (docs/control-plane.md, "Tokens" and "Revocations").
 */

const schemas = loadSchemas();
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const claimsOf = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8"));

describe("idp: tokens for an SP audience and the revocation feed", () => {
  let w: World;
  let tokenEndpoint: string;
  let feed: string;
  beforeAll(async () => {
    w = await startWorld();
    tokenEndpoint = w.discovery.token_endpoint!;
    feed = w.discovery.openape_revocations_endpoint!;
  });
  afterAll(async () => {
    await w?.idp.stop();
  });
  const exchange = (params: Record<string, string>) => api(w.idp.url).post(tokenEndpoint, params);

  it("exchanges an agent's and a human's own session token for the SP audience, with owner, approvers and rev", async () => {
    const bot = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot, audience: "troop.test" });
    expect(bot.status).toBe(200);
    expect(bot.body).toMatchObject({ token_type: "Bearer", expires_in: 3600 });
    const c = claimsOf(bot.body.access_token);
    schemas.assert("sp-token-claims", c);
    expect(c).toMatchObject({
      iss: w.idp.issuer,
      sub: USERS.bot,
      aud: "troop.test",
      act: "agent",
      owner: USERS.alice,
      approvers: [USERS.bob],
    });
    expect(c.rev).toHaveLength(1);
    expect(c.rev[0]).toMatch(/^[A-Za-z0-9_-]{22}$/);
    const alice = await exchange({
      grant_type: EXCHANGE,
      subject_token: w.tokens.alice,
      audience: "troop.test",
    });
    const a = claimsOf(alice.body.access_token);
    schemas.assert("sp-token-claims", a);
    expect(a).toMatchObject({ sub: USERS.alice, act: "human", approvers: [] });
    expect(a.owner).toBeUndefined();
    expect(a.rev[0]).not.toBe(c.rev[0]);
  });

  it("refuses an own-token exchange without audience, for apes-cli, with an SP or delegated token, or a forged one", async () => {
    const none = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot });
    expect(none.body.error).toBe("invalid_request");
    const star = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot, audience: "*" });
    expect(star.body.error).toBe("invalid_request");
    const cli = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot, audience: "apes-cli" });
    expect(cli.body.error).toBe("invalid_target");
    const sp = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot, audience: "troop.test" });
    const again = await exchange({
      grant_type: EXCHANGE,
      subject_token: sp.body.access_token,
      audience: "other.test",
    });
    expect(again.status).toBe(400);
    expect(again.body.error).toBe("invalid_grant");
    const [h, p] = w.tokens.bot.split(".");
    const forged = await exchange({ grant_type: EXCHANGE, subject_token: `${h}.${p}.AAAA`, audience: "t" });
    expect(forged.body.error).toBe("invalid_grant");
    const nothing = await exchange({ grant_type: EXCHANGE, audience: "troop.test" });
    expect(nothing.body.error).toBe("invalid_request");
    const badType = await exchange({
      grant_type: EXCHANGE,
      subject_token: w.tokens.bot,
      subject_token_type: "urn:x",
      audience: "troop.test",
    });
    expect(badType.body.error).toBe("invalid_request");
  });

  it("a delegated token for the SP lists the delegate's owner and approvers and three revocation handles", async () => {
    const d = await w.as("alice").post(w.delegations, { delegate: USERS.bot, audience: "troop.test" });
    expect(d.status).toBe(201);
    const t = await exchange({
      grant_type: EXCHANGE,
      actor_token: w.tokens.bot,
      delegation_grant_id: d.body.id,
      audience: "troop.test",
    });
    expect(t.status).toBe(200);
    const c = claimsOf(t.body.access_token);
    schemas.assert("delegated-token-claims", c);
    expect(c).toMatchObject({ sub: USERS.alice, act: { sub: USERS.bot }, owner: USERS.alice });
    expect(c.rev).toHaveLength(3);
    // Revoking the delegation publishes its handle (and only an opaque handle) on the feed.
    const before = (await api(w.idp.url).get(feed)).body.next as number;
    const waiting = api(w.idp.url).get(`${feed}?after=${before}`, { prefer: "wait=10" });
    expect((await w.as("alice").delete(`${w.delegations}/${d.body.id}`)).status).toBe(200);
    const got = await waiting;
    expect(got.status).toBe(200);
    expect(got.body.events).toHaveLength(1);
    expect(got.body.events[0].handle).toBe(c.rev[2]);
    expect(JSON.stringify(got.body)).not.toContain(d.body.id);
    expect(JSON.stringify(got.body)).not.toContain("alice");
    expect(got.body.next).toBe(got.body.events[0].seq);
  });

  it("a user disabled by the offline admin command appears on a waiting long poll", async () => {
    const sp = await exchange({ grant_type: EXCHANGE, subject_token: w.tokens.bot2, audience: "troop.test" });
    const handle = claimsOf(sp.body.access_token).rev[0];
    const before = (await api(w.idp.url).get(feed)).body.next as number;
    const waiting = api(w.idp.url).get(`${feed}?after=${before}`, { prefer: "wait=20" });
    const r = await runApes(["idp", "users", "disable", USERS.bot2, "--data", w.idp.dataDir]);
    expect(r.code).toBe(0);
    const got = await waiting;
    expect(got.body.events.map((e: { handle: string }) => e.handle)).toEqual([handle]);
    // Without `after`, the whole retained feed from the start; bad parameters refused.
    const all = await api(w.idp.url).get(feed);
    expect(all.body.events.map((e: { handle: string }) => e.handle)).toContain(handle);
    expect((await api(w.idp.url).get(`${feed}?after=-1`)).status).toBe(400);
    expect((await api(w.idp.url).get(`${feed}?limit=5000`)).status).toBe(400);
    expect((await api(w.idp.url).get(`${feed}?token=x`)).status).toBe(400);
  });
});
