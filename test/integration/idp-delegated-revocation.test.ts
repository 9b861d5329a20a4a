import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, ls, type Name, runApes, startWorld, testStore, USERS, type World } from "../helpers/idp.ts";

const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

/**
 * A delegated token (sub = delegator, act.sub = delegate) is re-checked on every request: revoking
 * its delegation, or disabling either party (also with the offline admin command while the server
 * runs), stops it on the very next call. Writes made with it record and log both parties.
 */
describe("idp: delegated tokens stop at revocation and at a disabled party", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  const exchange = (actor: Name, delegation: string) =>
    api(w.idp.url).post(
      w.discovery.token_endpoint!,
      new URLSearchParams({
        grant_type: EXCHANGE,
        actor_token: w.tokens[actor],
        delegation_grant_id: delegation,
        audience: "apes-cli",
      }).toString(),
      { "content-type": "application/x-www-form-urlencoded" },
    );

  /** delegator lets delegate use the IdP's APIs; returns the delegation id and the delegated token. */
  const delegated = async (delegator: Name, delegate: Name) => {
    const d = await w.as(delegator).post(w.delegations, {
      delegate: USERS[delegate],
      audience: "apes-cli",
      grant_type: "always",
    });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    const t = await exchange(delegate, d.body.id);
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    return { id: d.body.id as string, token: t.body.access_token as string };
  };

  /** The delegator's own approved `once` grant, for the delegated token to fetch. */
  const approvedGrant = async (delegator: Name, argv: string[]) => {
    const g = await w.as(delegator).post(w.grants, { ...ls(argv), grant_type: "once" });
    expect((await w.approve(delegator, g.body.id)).status).toBe(200);
    return g.body.id as string;
  };

  const disable = async (name: Name) => {
    const r = await runApes(["idp", "users", "disable", USERS[name], "--data", w.idp.dataDir]);
    expect(r.code, r.stderr).toBe(0);
  };

  it("revoking the delegation: the delegated token gets 401 on the very next call", async () => {
    const { id, token } = await delegated("alice", "bot");
    const as = api(w.idp.url, token);
    expect((await as.get(w.grants)).status).toBe(200);
    const g = await approvedGrant("alice", ["revoke-case"]);
    expect((await w.as("alice").delete(`${w.delegations}/${id}`)).status).toBe(200);

    const list = await as.get(w.grants);
    expect(list.status).toBe(401);
    expect(list.body.detail).toMatch(/delegation is revoked/);
    expect((await as.post(`${w.grants}/${g}/token`)).status).toBe(401);
    expect((await as.post(`${w.grants}/${g}/consume`)).status).toBe(401);
    // The delegator's approval was neither fetched nor used.
    expect((await w.as("alice").get(`${w.grants}/${g}`)).body.status).toBe("approved");
    expect((await exchange("bot", id)).body.error).toBe("invalid_grant");
  });

  it("a `once` delegation: its token works after the exchange and stops when the delegator revokes", async () => {
    const d = await w.as("alice").post(w.delegations, {
      delegate: USERS.bot,
      audience: "apes-cli",
      grant_type: "once",
    });
    const t = await exchange("bot", d.body.id);
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    const as = api(w.idp.url, t.body.access_token);
    expect((await as.get(w.grants)).status).toBe(200);
    expect((await w.as("alice").get(`${w.delegations}/${d.body.id}`)).body.status).toBe("used");
    expect((await w.as("alice").delete(`${w.delegations}/${d.body.id}`)).status).toBe(200);
    expect((await as.get(w.grants)).status).toBe(401);
  });

  it("a long poll that outlasts the revocation answers 401, not the grant", async () => {
    const { id, token } = await delegated("alice", "bot");
    const g = await w.as("alice").post(w.grants, { ...ls(["long-poll"]), grant_type: "once" });
    const poll = api(w.idp.url, token).get(`${w.grants}/${g.body.id}`, { prefer: "wait=30" });
    // Let the poll reach the server and start waiting before the delegation is revoked and the
    // grant changes (were it later, the poll would get 401 at its start: the test cannot pass wrongly).
    await sleep(500);
    expect((await w.as("alice").delete(`${w.delegations}/${id}`)).status).toBe(200);
    expect((await w.approve("alice", g.body.id)).status).toBe(200);
    const answer = await poll;
    expect(answer.status).toBe(401);
    expect(answer.body).not.toHaveProperty("request");
  });

  it("disabling the delegate (offline command, server running): 401 on the next call", async () => {
    const { id, token } = await delegated("carol", "bot2");
    const as = api(w.idp.url, token);
    const g = await approvedGrant("carol", ["disable-delegate"]);
    expect((await as.get(w.grants)).status).toBe(200);
    await disable("bot2");

    const list = await as.get(w.grants);
    expect(list.status).toBe(401);
    expect(list.body.detail).toMatch(/acting party/);
    expect((await as.post(`${w.grants}/${g}/token`)).status).toBe(401);
    expect((await w.as("carol").get(`${w.grants}/${g}`)).body.status).toBe("approved");
    expect((await exchange("bot2", id)).body.error).toBe("invalid_grant");
  });

  it("disabling the delegator (offline command): 401 on the next call, no new exchange", async () => {
    const { id, token } = await delegated("dave", "bob");
    const as = api(w.idp.url, token);
    const g = await approvedGrant("dave", ["disable-delegator"]);
    expect((await as.get(w.grants)).status).toBe(200);
    await disable("dave");

    expect((await as.get(w.grants)).status).toBe(401);
    expect((await as.post(`${w.grants}/${g}/token`)).status).toBe(401);
    expect((await exchange("bob", id)).body.error).toBe("invalid_grant");
  });

  it("a user disabled by the offline command loses its own live session on the next request", async () => {
    const bob = w.as("bob");
    expect((await bob.get(w.grants)).status).toBe(200);
    await disable("bob");
    const r = await bob.get(w.grants);
    expect(r.status).toBe(401);
    expect(r.body.detail).toMatch(/disabled/);
  });

  it("writes with a delegated token log and record both parties", async () => {
    const { token } = await delegated("alice", "root");
    const as = api(w.idp.url, token);
    const created = await as.post(w.grants, { ...ls(["acting-party"]), grant_type: "once" });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // On the wire the grant stays schema-conformant: the requester is the delegator.
    expect(created.body.request.requester).toBe(USERS.alice);
    const revoked = await as.post(`${w.grants}/${created.body.id}/revoke`);
    expect(revoked.status, JSON.stringify(revoked.body)).toBe(200);

    const rids = [created.headers.get("x-request-id"), revoked.headers.get("x-request-id")];
    const logLines = () =>
      w.idp
        .logs()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    const requestLines = () =>
      logLines().filter((l) => l.msg === "request" && rids.includes(l.rid as string));
    // The request line is written after the response: wait for it (bounded).
    for (let i = 0; i < 100 && requestLines().length < 2; i++) await sleep(50);
    const lines = logLines();
    const request = requestLines();
    expect(request).toHaveLength(2);
    for (const l of request) expect(l).toMatchObject({ sub: USERS.alice, act_sub: USERS.root });
    const grantId = created.body.id;
    const writes = lines.filter((l) => l.grant === grantId);
    expect(writes.map((l) => l.msg)).toEqual(["grant created", "grant revoked"]);
    expect(writes[0]).toMatchObject({ requester: USERS.alice, act_sub: USERS.root });
    expect(writes[1]).toMatchObject({ by: USERS.alice, act_sub: USERS.root });

    // The stored row (SQLite's file; the PostgreSQL store's row is checked by the store contract).
    if (testStore() === "sqlite") {
      const db = new DatabaseSync(join(w.idp.dataDir, "idp.sqlite"), { readOnly: true });
      try {
        const row = db
          .prepare("SELECT requester, created_act, decided_act FROM grants WHERE id = ?")
          .get(grantId);
        expect(row).toEqual({ requester: USERS.alice, created_act: USERS.root, decided_act: USERS.root });
      } finally {
        db.close();
      }
    }
    // The delegator's own token records no acting party.
    const own = await w.as("alice").post(w.grants, { ...ls(["own"]), grant_type: "once" });
    const line = w.idp
      .logs()
      .split("\n")
      .find((l) => l.includes('"grant created"') && l.includes(own.body.id));
    expect(JSON.parse(line!)).not.toHaveProperty("act_sub");
  });
});
