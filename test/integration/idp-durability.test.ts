import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, ls, startWorld, type World } from "../helpers/idp.ts";

/**
 * SIGKILL the IdP in the middle of a stream of approvals and consumes, restart it on the same data
 * dir and port: every acknowledged approval is there, and no once-grant is consumed twice.
 */
describe("idp durability", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  it("keeps every acknowledged approval and consumption across SIGKILL", async () => {
    const N = 120;
    const ids: string[] = [];
    for (let i = 0; i < N; i++) {
      ids.push(
        (await w.as("bot").post(w.grants, { ...ls(["durable", String(i)]), grant_type: "once" })).body.id,
      );
    }
    // Half approved and tokened up front, to consume during the crash.
    const jwts = new Map<string, string>();
    for (const id of ids.slice(0, 40)) {
      await w.approve("alice", id);
      jwts.set(id, (await w.as("bot").post(`${w.grants}/${id}/token`)).body.authz_jwt);
    }
    const approvedAck = new Set<string>(jwts.keys());
    const consumedCount = new Map<string, number>();
    const noteConsume = (id: string, r: { status: number; body: { status?: string } }) => {
      if (r.status === 200 && r.body.status === "consumed")
        consumedCount.set(id, (consumedCount.get(id) ?? 0) + 1);
    };

    let killed = false;
    const approver = (async () => {
      for (const id of ids.slice(40)) {
        try {
          const r = await w.approve("alice", id);
          if (r.status === 200) approvedAck.add(id);
        } catch {
          if (killed) return;
        }
      }
    })();
    const consumer = (async () => {
      for (const [id, jwt] of jwts) {
        try {
          noteConsume(id, await api(w.idp.url, jwt).post(`${w.grants}/${id}/consume`));
        } catch {
          if (killed) return;
        }
      }
    })();
    // Kill once a good part of the stream has been acknowledged, while requests are in flight.
    for (let i = 0; i < 2000 && approvedAck.size < 70; i++) await new Promise((r) => setTimeout(r, 2));
    killed = true;
    await w.idp.kill("SIGKILL");
    await Promise.all([approver, consumer]);
    expect(approvedAck.size).toBeGreaterThan(40);

    await w.idp.restart();
    // Session tokens survive the restart (the signing key is persisted).
    for (const id of approvedAck) {
      const g = (await w.as("alice").get(`${w.grants}/${id}`)).body;
      expect(["approved", "used"], id).toContain(g.status);
      expect(g.decided_by).toBe("alice@example.com");
    }
    // Every once-grant is consumed at most once over the whole run, crash included.
    for (const [id, jwt] of jwts)
      noteConsume(id, await api(w.idp.url, jwt).post(`${w.grants}/${id}/consume`));
    for (const [id, jwt] of jwts)
      noteConsume(id, await api(w.idp.url, jwt).post(`${w.grants}/${id}/consume`));
    for (const id of jwts.keys()) expect(consumedCount.get(id) ?? 0, id).toBeLessThanOrEqual(1);
    for (const id of jwts.keys()) {
      expect((await w.as("bot").get(`${w.grants}/${id}`)).body.status).toBe("used");
    }
  });

  it("shuts down gracefully on SIGTERM: in-flight waiters are answered, exit code 0", async () => {
    const g = (await w.as("bot").post(w.grants, { ...ls(["graceful"]), grant_type: "once" })).body;
    const etag = (await w.as("bot").get(`${w.grants}/${g.id}`)).headers.get("etag")!;
    const waiting = w.as("bot").get(`${w.grants}/${g.id}`, { prefer: "wait=60", "if-none-match": etag });
    await w.as("alice").get(`${w.grants}/${g.id}`);
    await w.idp.stop();
    const r = await waiting;
    expect([200, 304]).toContain(r.status);
    expect(w.idp.exitCode()).toBe(0);
    const lines = w.idp
      .logs()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.at(-1)).toMatchObject({ msg: "stopped" });
    await w.idp.restart();
    expect((await w.as("bot").get(`${w.grants}/${g.id}`)).body.status).toBe("pending");
  });

  it("never logs a token, signature or key", () => {
    const logs = w.idp.logs();
    for (const t of Object.values(w.tokens)) expect(logs).not.toContain(t.split(".")[2]);
    expect(logs).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
    expect(logs).not.toMatch(/PRIVATE KEY/);
    for (const line of logs.trim().split("\n")) expect(() => JSON.parse(line)).not.toThrow();
  });
});
