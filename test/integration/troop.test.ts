import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLOSE } from "../../protocol/troop.ts";
import { api, runApes, startWorld, USERS, type World } from "../helpers/idp.ts";
import {
  connectNest,
  delegatedTroopToken,
  type NestClient,
  startTroop,
  type TroopHandle,
  troopToken,
} from "../helpers/troop.ts";

/**
 * `apes troop serve` against a real IdP, with real WebSocket clients as nests (the nest daemon is
 * nest/'s): the upgrade's authentication, actors, duplicates, intents (routing, idempotency, order,
 * durability, redelivery), forged results, revocation, secrets. docs/control-plane.md is the contract.
 */

const spawnBody = (id: string, nest: string, extra: Record<string, unknown> = {}) => ({
  id,
  nest,
  kind: "spawn",
  agent: "worker",
  spec: { owner: USERS.alice, argv: ["/usr/bin/env", "true"], env: ["PATH"], secrets: ["OPENAI_API_KEY"] },
  ...extra,
});
const stopBody = (id: string, nest: string) => ({ id, nest, kind: "stop", agent: "worker" });

async function nestOf(url: string, token: string, options = {}): Promise<NestClient> {
  const r = await connectNest(url, token, options);
  if (!r.ok) throw new Error(`nest socket refused: ${r.status} ${r.body}`);
  return r.nest;
}

describe("apes troop serve", () => {
  let w: World;
  let troop: TroopHandle;
  const t: Record<string, string> = {};
  const used: string[] = [];
  const as = (name: string) => api(troop.url, t[name]);
  const auditLines = () =>
    readFileSync(join(troop.dataDir, "audit.log"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  beforeAll(async () => {
    w = await startWorld();
    troop = await startTroop(w.idp.issuer);
    for (const n of ["alice", "bob", "carol", "dave", "bot", "bot2"] as const) {
      t[n] = await troopToken(w.idp.url, w.tokens[n]);
      used.push(t[n]!);
    }
  });
  afterAll(async () => {
    await troop?.stop();
    await w?.idp.stop();
  });

  it("refuses before the upgrade: a query string, no bearer, no subprotocol, another audience, a session token, a forged alg", async () => {
    const q = await connectNest(`${troop.wsUrl}?access_token=${t.bot}`, undefined);
    expect(q).toMatchObject({ ok: false, status: 400 });
    const q2 = await connectNest(`${troop.wsUrl}?x=1`, t.bot);
    expect(q2).toMatchObject({ ok: false, status: 400 });
    expect(await connectNest(troop.wsUrl, undefined)).toMatchObject({ ok: false, status: 401 });
    expect(await connectNest(troop.wsUrl, t.bot, { protocols: ["other"] })).toMatchObject({
      ok: false,
      status: 400,
    });
    const other = await troopToken(w.idp.url, w.tokens.bot, "other.test");
    expect(await connectNest(troop.wsUrl, other)).toMatchObject({ ok: false, status: 401 });
    expect(await connectNest(troop.wsUrl, w.tokens.bot)).toMatchObject({ ok: false, status: 401 });
    const [h, p, s] = t.bot!.split(".");
    const header = JSON.parse(Buffer.from(h!, "base64url").toString());
    for (const alg of ["none", "HS256"]) {
      const forged = `${Buffer.from(JSON.stringify({ ...header, alg })).toString("base64url")}.${p}.${s}`;
      expect(await connectNest(troop.wsUrl, forged)).toMatchObject({ ok: false, status: 401 });
    }
    // The same on REST: the same verification.
    expect((await api(troop.url, other).get("/v1/nests")).status).toBe(401);
    expect((await api(troop.url).get("/v1/nests")).status).toBe(401);
    expect(auditLines().filter((l) => l.event === "socket.refused").length).toBeGreaterThanOrEqual(7);
  });

  it("refuses a token of the IdP that is no SP token (an AuthZ-JWT for the troop's audience: no rev handles)", async () => {
    const g = await w.as("bot").post(w.grants, {
      target_host: "web1",
      audience: "troop.test",
      grant_type: "once",
      command: ["ls"],
    });
    expect(g.status).toBe(201);
    expect((await w.approve("alice", g.body.id)).status).toBe(200);
    const authz = (await w.as("bot").post(`${w.grants}/${g.body.id}/token`)).body.authz_jwt as string;
    expect(await connectNest(troop.wsUrl, authz)).toMatchObject({ ok: false, status: 403 });
  });

  let bot: NestClient;
  it("an agent and a human connect as nests alike; hello names the nest", async () => {
    bot = await nestOf(troop.wsUrl, t.bot!);
    const hello = await bot.next("hello");
    expect(hello).toMatchObject({ nest: USERS.bot, ping_interval_s: 1 });
    expect(hello.reauth_by).toBeGreaterThan(hello.server_time);
    const alice = await nestOf(troop.wsUrl, t.alice!);
    expect((await alice.next("hello")).nest).toBe(USERS.alice);
    alice.close();
    await alice.closed;
  });

  it("a second connection for a live nest is refused with CLOSE.duplicate; the first stays", async () => {
    const second = await nestOf(troop.wsUrl, t.bot!);
    expect((await second.closed).code).toBe(CLOSE.duplicate);
    expect(bot.ws.readyState).toBe(bot.ws.OPEN);
    // The first one still gets intents.
    const r = await as("alice").post("/v1/intents", stopBody("dup-check", USERS.bot));
    expect(r.status).toBe(201);
    expect((await bot.next("intent")).intent.id).toBe("dup-check");
    bot.send({ type: "ack", intent_id: "dup-check" });
    bot.send({ type: "result", intent_id: "dup-check", state: "done" });
  });

  it("a connection that fails the duplicate ping is replaced by the new one", async () => {
    const deaf = await nestOf(troop.wsUrl, t.bot2!, { autoPong: false });
    await deaf.next("hello");
    const fresh = await nestOf(troop.wsUrl, t.bot2!);
    expect((await fresh.next("hello")).nest).toBe(USERS.bot2);
    expect((await deaf.closed).code).toBe(CLOSE.pingTimeout);
    fresh.close();
    await fresh.closed;
  });

  it("a nest that does not answer pings is closed with CLOSE.pingTimeout", async () => {
    const deaf = await nestOf(troop.wsUrl, t.carol!, { autoPong: false });
    let pings = 0;
    deaf.ws.on("ping", () => pings++);
    expect((await deaf.next("hello")).ping_interval_s).toBe(1);
    expect((await deaf.closed).code).toBe(CLOSE.pingTimeout);
    expect(pings).toBeGreaterThanOrEqual(1);
  });

  it("routes intents only for the nest's owner and approvers; replays dedupe; another body is 409", async () => {
    const created = await as("alice").post("/v1/intents", spawnBody("i-1", USERS.bot));
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      id: "i-1",
      nest: USERS.bot,
      submitted_by: USERS.alice,
      state: "queued",
    });
    const frame = await bot.next("intent");
    expect(frame.intent).toMatchObject({ id: "i-1", kind: "spawn", submitted_by: USERS.alice });
    const seq1 = frame.intent.seq;
    // The same id and body: the same intent, not delivered twice on this socket.
    const replay = await as("alice").post("/v1/intents", spawnBody("i-1", USERS.bot));
    expect(replay.status).toBe(200);
    expect(replay.body.seq).toBe(seq1);
    const conflict = await as("alice").post("/v1/intents", spawnBody("i-1", USERS.bot, { agent: "other" }));
    expect(conflict.status).toBe(409);
    // bob approves bot: he may command it; dave and carol may not; bot2 is not bot's commander either.
    expect((await as("bob").post("/v1/intents", stopBody("i-bob", USERS.bot))).status).toBe(201);
    // bob may command bot, but not spawn an agent in alice's name.
    expect((await as("bob").post("/v1/intents", spawnBody("i-bob-spawn", USERS.bot))).status).toBe(403);
    expect((await as("dave").post("/v1/intents", stopBody("i-dave", USERS.bot))).status).toBe(403);
    expect((await as("carol").post("/v1/intents", stopBody("i-carol", USERS.bot))).status).toBe(403);
    expect((await as("bot2").post("/v1/intents", stopBody("i-bot2", USERS.bot))).status).toBe(403);
    // No nest, or one that never connected: refused, never routed elsewhere.
    expect((await as("alice").post("/v1/intents", { id: "i-x", kind: "stop", agent: "worker" })).status).toBe(
      400,
    );
    expect((await as("alice").post("/v1/intents", stopBody("i-y", "ghost@example.com"))).status).toBe(404);
    expect((await as("dave").get("/v1/intents/i-1")).status).toBe(404);
    expect((await as("bob").get("/v1/intents/i-1")).body.state).toBe("delivered");
    expect((await bot.next("intent")).intent.id).toBe("i-bob");
    const refused = auditLines().filter((l) => l.event === "intent.refused");
    expect(refused.map((l) => l.by)).toEqual(expect.arrayContaining([USERS.dave, USERS.carol, USERS.bot2]));
  });

  it("ack and results move the intent along; a result forged by another nest is refused and audited", async () => {
    bot.send({ type: "ack", intent_id: "i-1" });
    bot.send({ type: "result", intent_id: "i-1", state: "running" });
    const bot2 = await nestOf(troop.wsUrl, t.bot2!);
    await bot2.next("hello");
    bot2.send({ type: "result", intent_id: "i-bob", state: "failed", detail: "forged" });
    const err = await bot2.next("error");
    expect(err.code).toBe("not_addressed");
    const viaRest = await as("bot2").post("/v1/nest/frames", { type: "ack", intent_id: "i-bob" });
    expect(viaRest.status).toBe(403);
    expect((await as("alice").get("/v1/intents/i-bob")).body.state).toBe("delivered");
    expect((await as("alice").get("/v1/intents/i-1")).body.state).toBe("running");
    const forged = auditLines().filter((l) => l.event === "frame.refused" && l.nest === USERS.bot2);
    expect(forged.length).toBeGreaterThanOrEqual(2);
    expect(forged[0]).toMatchObject({ addressed_to: USERS.bot, reason: "not_addressed" });
    // A frame that is not valid closes the socket with CLOSE.badFrame.
    bot2.send("{not json");
    expect((await bot2.closed).code).toBe(CLOSE.badFrame);
    bot.send({ type: "result", intent_id: "i-1", state: "done", detail: "started" });
    bot.send({ type: "ack", intent_id: "i-bob" });
    bot.send({
      type: "status",
      version: "0.1.0",
      agents: [{ name: "worker", state: "running", pid: 4242, restarts: 0, since: 1 }],
    });
    // Status shows up for commanders, not for others.
    await expect
      .poll(
        async () =>
          (await as("alice").get("/v1/nests")).body.data.find((n: { id: string }) => n.id === USERS.bot)
            ?.version,
      )
      .toBe("0.1.0");
    const nests = (await as("alice").get("/v1/nests")).body.data;
    expect(nests.find((n: { id: string }) => n.id === USERS.bot)).toMatchObject({
      connected: true,
      agents: 1,
    });
    expect((await as("dave").get("/v1/nests")).body.data).toEqual([]);
    expect((await as("bob").get(`/v1/nests/${USERS.bot}/agents`)).body.data[0]).toMatchObject({
      name: "worker",
      pid: 4242,
    });
    expect((await as("dave").get(`/v1/nests/${USERS.bot}/agents`)).status).toBe(404);
    expect((await as("alice").get("/v1/intents/i-1")).body).toMatchObject({
      state: "done",
      detail: "started",
    });
    const page = await api(troop.url, t.alice).get("/status");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.body).toContain(USERS.bot);
    expect(page.body).toContain("i-1");
  });

  it("keeps per-nest order: intents arrive in seq order; the list pages newest first", async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `order-${i}`);
    await Promise.all(ids.map((id) => as("alice").post("/v1/intents", stopBody(id, USERS.bot))));
    const got: number[] = [];
    for (let i = 0; i < ids.length; i++) got.push((await bot.next("intent")).intent.seq);
    expect(got).toEqual([...got].sort((a, b) => a - b));
    expect(new Set(got).size).toBe(ids.length);
    const first = await as("alice").get(`/v1/intents?nest=${USERS.bot}&limit=3`);
    expect(first.body.data.map((i: { seq: number }) => i.seq)).toEqual([...got].reverse().slice(0, 3));
    const second = await as("alice").get(
      `/v1/intents?nest=${USERS.bot}&limit=3&cursor=${first.body.pagination.cursor}`,
    );
    expect(second.body.data.map((i: { seq: number }) => i.seq)).toEqual([...got].reverse().slice(3, 6));
    expect((await as("dave").get(`/v1/intents?nest=${USERS.bot}`)).status).toBe(404);
    expect((await as("alice").get("/v1/intents")).status).toBe(400);
    for (const id of ids) bot.send({ type: "ack", intent_id: id });
  });

  it("intents survive a troop restart; unacknowledged ones are delivered again on reconnect", async () => {
    expect((await as("alice").post("/v1/intents", stopBody("before-restart", USERS.bot))).status).toBe(201);
    expect((await bot.next("intent")).intent.id).toBe("before-restart"); // delivered, not acked
    const stopping = troop.restart();
    expect((await bot.closed).code).toBe(CLOSE.goingAway);
    await stopping;
    expect((await as("alice").post("/v1/intents", stopBody("while-away", USERS.bot))).status).toBe(201);
    bot = await nestOf(troop.wsUrl, t.bot!);
    await bot.next("hello");
    const a = (await bot.next("intent")).intent;
    const b = (await bot.next("intent")).intent;
    expect([a.id, b.id]).toEqual(["before-restart", "while-away"]);
    expect(b.seq).toBeGreaterThan(a.seq);
    bot.send({ type: "ack", intent_id: a.id });
    bot.send({ type: "ack", intent_id: b.id });
    await expect.poll(async () => (await as("alice").get("/v1/intents/while-away")).body.state).toBe("acked");
    expect((await as("alice").get("/v1/intents/i-1")).body.state).toBe("done");
  });

  it("the REST fallback: a nest without a socket long-polls its intents and posts frames", async () => {
    const waiting = as("bot2").get("/v1/nest/intents", { prefer: "wait=20" });
    await new Promise((r) => setTimeout(r, 200));
    expect((await as("carol").post("/v1/intents", stopBody("rest-1", USERS.bot2))).status).toBe(201);
    const got = await waiting;
    expect(got.status).toBe(200);
    expect(got.body.data.map((i: { id: string }) => i.id)).toEqual(["rest-1"]);
    expect((await as("bot2").post("/v1/nest/frames", { type: "ack", intent_id: "rest-1" })).status).toBe(200);
    expect(
      (await as("bot2").post("/v1/nest/frames", { type: "result", intent_id: "rest-1", state: "done" }))
        .status,
    ).toBe(200);
    expect((await as("carol").get("/v1/intents/rest-1")).body.state).toBe("done");
    expect((await as("bot2").post("/v1/nest/frames", { type: "reauth", token: "x" })).status).toBe(400);
  });

  it("a delegated token is recorded as the delegate acting for the delegator", async () => {
    const { token } = await delegatedTroopToken(w, "alice", "bot", USERS.bot);
    used.push(token);
    const r = await api(troop.url, token).post("/v1/intents", stopBody("via-delegate", USERS.bot));
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ submitted_by: USERS.alice, submitted_via: USERS.bot });
    const line = auditLines().find((l) => l.event === "intent.submitted" && l.intent === "via-delegate");
    expect(line).toMatchObject({ by: USERS.alice, via: USERS.bot, nest: USERS.bot });
    expect((await bot.next("intent")).intent).toMatchObject({ id: "via-delegate", submitted_via: USERS.bot });
  });

  it("revoking the delegation closes the delegated socket; disabling the nest identity closes its socket", async () => {
    bot.close();
    await bot.closed;
    const { token, delegation } = await delegatedTroopToken(w, "alice", "bot", USERS.bot);
    used.push(token);
    const delegated = await nestOf(troop.wsUrl, token);
    expect((await delegated.next("hello")).nest).toBe(USERS.bot);
    const open = auditLines().filter((l) => l.event === "socket.open" && l.kind === "delegated");
    expect(open.at(-1)).toMatchObject({ by: USERS.alice, via: USERS.bot, nest: USERS.bot });
    expect((await w.as("alice").delete(`${w.delegations}/${delegation}`)).status).toBe(200);
    expect((await delegated.closed).code).toBe(CLOSE.revoked);
    // The revoked token is refused from now on, on the socket and on REST.
    expect(await connectNest(troop.wsUrl, token)).toMatchObject({ ok: false, status: 401 });
    const bot2 = await nestOf(troop.wsUrl, t.bot2!);
    await bot2.next("hello");
    const r = await runApes(["idp", "users", "disable", USERS.bot2, "--data", w.idp.dataDir]);
    expect(r.code).toBe(0);
    expect((await bot2.closed).code).toBe(CLOSE.revoked);
    expect((await as("bot2").get("/v1/nest/intents")).status).toBe(401);
  });

  it("intents carry secret names only; no secret value and no token is in the database, the audit or the logs", async () => {
    const withValue = await as("alice").post("/v1/intents", {
      ...spawnBody("leak-1", USERS.bot),
      spec: { owner: USERS.alice, argv: ["/bin/true"], env: ["API_KEY=sk-live-SECRETVALUE"], secrets: [] },
    });
    expect(withValue.status).toBe(400);
    const asSecret = await as("alice").post("/v1/intents", {
      ...spawnBody("leak-2", USERS.bot),
      spec: { owner: USERS.alice, argv: ["/bin/true"], secrets: ["sk-live-SECRETVALUE=x"] },
    });
    expect(asSecret.status).toBe(400);
    const extra = await as("alice").post("/v1/intents", {
      ...spawnBody("leak-3", USERS.bot),
      secret_values: { K: "sk-live-SECRETVALUE" },
    });
    expect(extra.status).toBe(400);
    await troop.stop();
    const files = ["troop.sqlite", "troop.sqlite-wal", "audit.log"].map((f) => {
      try {
        return readFileSync(join(troop.dataDir, f)).toString("latin1");
      } catch {
        return "";
      }
    });
    const everything = files.join("\n") + troop.logs();
    expect(everything).toContain("OPENAI_API_KEY"); // the name is stored, as it must be
    expect(everything).not.toContain("sk-live-SECRETVALUE");
    for (const token of used) {
      expect(everything).not.toContain(token);
      expect(everything).not.toContain(token.split(".")[2]!);
    }
  });
});
