import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, ls, startWorld, USERS, type World } from "../helpers/idp.ts";

describe("idp concurrency and push", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  const approvedOnce = async (argv: string[]) => {
    const g = (await w.as("bot").post(w.grants, { ...ls(argv), grant_type: "once" })).body;
    await w.approve("alice", g.id);
    const t = (await w.as("bot").post(`${w.grants}/${g.id}/token`)).body;
    return { id: g.id as string, jwt: t.authz_jwt as string };
  };

  it("50 parallel consumes of one once-grant: exactly one is consumed", async () => {
    const { id, jwt } = await approvedOnce(["reboot"]);
    const results = await Promise.all(
      Array.from({ length: 50 }, () => api(w.idp.url, jwt).post(`${w.grants}/${id}/consume`)),
    );
    const consumed = results.filter((r) => r.status === 200 && r.body.status === "consumed");
    const refused = results.filter((r) => r.status === 409 && r.body.error === "already_consumed");
    expect(consumed.length).toBe(1);
    expect(refused.length).toBe(49);
  });

  it("parallel approve and deny of one grant: exactly one decision wins", async () => {
    const g = (await w.as("bot").post(w.grants, { ...ls(["race"]), grant_type: "once" })).body;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        i % 3
          ? w.approve(i % 2 ? "alice" : "bob", g.id)
          : (i % 2 ? w.as("alice") : w.as("bob")).post(`${w.grants}/${g.id}/deny`),
      ),
    );
    expect(results.filter((r) => r.status === 200).length).toBe(1);
    expect(results.filter((r) => r.status === 409).length).toBe(19);
  });

  it("a waiter (Prefer: wait) is answered when the grant is approved", async () => {
    const g = (await w.as("bot").post(w.grants, { ...ls(["wait-1"]), grant_type: "once" })).body;
    const first = await w.as("bot").get(`${w.grants}/${g.id}`);
    const etag = first.headers.get("etag")!;
    const waiting = w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=30", "if-none-match": etag });
    // Approve only once the waiter is parked at the IdP (its request is logged when answered, so
    // instead give it a moment by round-tripping another request first).
    await w.as("alice").get(`${w.grants}/${g.id}`);
    const approved = await w.approve("alice", g.id);
    expect(approved.status).toBe(200);
    const r = await waiting;
    expect(r.status).toBe(200);
    expect(r.headers.get("preference-applied")).toBe("wait=30");
    expect(r.body.status).toBe("approved");
    expect(r.headers.get("etag")).not.toBe(etag);
  });

  it("several waiters on one grant are all answered by one decision", async () => {
    const created = await w.as("bot").post(w.grants, { ...ls(["wait-many"]), grant_type: "once" });
    const g = created.body;
    // With the ETag of the pending state, a waiter that arrives after the decision answers at once.
    const h = { prefer: "wait=30", "if-none-match": created.headers.get("etag")! };
    const waiters = (["bot", "alice", "bob", "root"] as const).map((n) =>
      w.as(n).get(`${w.grants}/${g.id}`, h),
    );
    await w.as("alice").get(`${w.grants}/${g.id}`);
    await w.as("bob").post(`${w.grants}/${g.id}/deny`);
    for (const r of await Promise.all(waiters)) {
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ status: "denied", decided_by: USERS.bob });
    }
  });

  it("a wait without a change ends after N seconds: 304 with If-None-Match, else the unchanged grant", async () => {
    const g = (await w.as("bot").post(w.grants, { ...ls(["wait-timeout"]), grant_type: "once" })).body;
    const first = await w.as("bot").get(`${w.grants}/${g.id}`);
    const etag = first.headers.get("etag")!;
    const r = await w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=1", "if-none-match": etag });
    expect(r.status).toBe(304);
    expect(r.headers.get("preference-applied")).toBe("wait=1");
    const r2 = await w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=1" });
    expect(r2.status).toBe(200);
    expect(r2.body.status).toBe("pending");
    // A stale ETag is answered at once with the current state.
    const r3 = await w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=60", "if-none-match": '"0"' });
    expect(r3.status).toBe(200);
  });

  it("caps the wait at 60 s", async () => {
    const g = (await w.as("bot").post(w.grants, { ...ls(["wait-cap"]), grant_type: "once" })).body;
    const r = await w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=0" });
    expect(r.headers.get("preference-applied")).toBe("wait=0");
    const etag = r.headers.get("etag")!;
    const waiting = w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=3600", "if-none-match": etag });
    await w.as("alice").get(`${w.grants}/${g.id}`);
    await w.approve("alice", g.id);
    const answered = await waiting;
    expect(answered.headers.get("preference-applied")).toBe("wait=60");
    expect(answered.body.status).toBe("approved");
  });
});
