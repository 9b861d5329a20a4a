import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { PostgresStore } from "../../idp/store/postgres/store.ts";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import {
  api,
  approveWithProof,
  databaseFor,
  type IdpHandle,
  loginWithKey,
  ls,
  openTestStore,
  runApes,
  startIdp,
  startWorld,
  USERS,
  type World,
} from "../helpers/idp.ts";

/** `apes idp migrate --from sqlite DIR --to postgres://...`: an embedded IdP moved, then served. */
describe("apes idp migrate", () => {
  let w: World;
  let moved: IdpHandle | undefined;
  afterAll(async () => {
    await w?.idp.stop();
    await moved?.stop();
  });

  it("copies users, keys, grants, the revocation feed and OAuth clients in order; the PostgreSQL IdP serves them; a second run is refused", async () => {
    w = await startWorld({ store: "sqlite" });
    const created: string[] = [];
    for (let i = 0; i < 7; i++) {
      created.push((await w.as("bot").post(w.grants, { ...ls([`m-${i}`]), grant_type: "once" })).body.id);
    }
    const approved = await approveWithProof(w.idp.url, w.tokens.alice, created[1]!, w.keys.alice.privateKey);
    expect(approved.status).toBe(200);
    expect((await w.as("alice").post(`${w.grants}/${created[2]}/deny`)).status).toBe(200);
    const oldKid = JSON.parse(Buffer.from(w.tokens.alice.split(".")[0]!, "base64url").toString()).kid;
    const rotated = await runApes(["idp", "keys", "rotate", "--data", w.idp.dataDir]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const client = ["idp", "clients", "add", "sp.example", "--redirect-uri", "https://sp.example/cb"];
    expect((await runApes([...client, "--data", w.idp.dataDir])).code).toBe(0);
    expect((await runApes(["idp", "users", "disable", USERS.dave, "--data", w.idp.dataDir])).code).toBe(0);
    const sqlite = openSqliteStore(w.idp.dataDir);
    await sqlite.addSubscription({
      id: "sub-1",
      owner: USERS.alice,
      channel: "webhook",
      target: "https://hooks.example/a",
      secret: "k",
      events: ["pending", "decided"],
      createdAt: 5,
    });
    await sqlite.enqueueNotifications([
      { key: "t.1", subscriptionId: "sub-1", event: "test", payload: "{}", createdAt: 6 },
    ]);
    await sqlite.close();
    // A Web Push key pair as the notifier keeps it (made on a first start with Web Push on).
    const vapid = { publicKey: "BPub-test", privateKey: "priv-test" };
    writeFileSync(join(w.idp.dataDir, "vapid.json"), `${JSON.stringify(vapid)}\n`, { mode: 0o600 });
    const feed = (await api(w.idp.url).get("/api/revocations?after=0")).body.events as { seq: number }[];
    expect(feed).toHaveLength(1);
    const before = (await w.as("root").get(`${w.grants}?limit=100`)).body.data as {
      id: string;
      status: string;
      approval_proof?: string;
    }[];
    expect(before.find((g) => g.id === created[1])?.approval_proof).toBeDefined();
    const firstPage = (await w.as("root").get(`${w.grants}?limit=3`)).body.pagination.cursor as string;

    const pgDir = join(mkdtempSync(join(tmpdir(), "apes-migrate-")), "pg");
    const [, url, , keyFile] = await databaseFor(pgDir);
    const args = [
      "--json",
      "idp",
      "migrate",
      "--from",
      "sqlite",
      w.idp.dataDir,
      "--to",
      url!,
      "--database-key-file",
      keyFile!,
    ];
    // Not while the embedded server runs (its data dir is locked): nothing is copied.
    const running = await runApes(args);
    expect(running.code).toBe(78);
    expect(running.stderr).toMatch(/already serving/);
    await w.idp.stop();

    const r = await runApes(args);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      users: 7,
      signing_keys: 2,
      grants: 7,
      revocations: 1,
      oauth_clients: 1,
      notify_subscriptions: 1,
      notify_outbox: 1,
      vapid_keys: 1,
    });
    const again = await runApes(args);
    expect(again.code).toBe(78);
    expect(again.stderr).toMatch(/already holds IdP data/);

    moved = await startIdp({ dataDir: pgDir, store: "postgres" });
    const token = await loginWithKey(moved.url, USERS.root, w.keys.root.privateKey);
    const as = api(moved.url, token);
    const d = (await api(moved.url).get("/.well-known/openid-configuration")).body;
    const grants = new URL(d.openape_grants_endpoint).pathname;
    const after = (await as.get(`${grants}?limit=100`)).body.data as { id: string; status: string }[];
    expect(after).toEqual(before); // approval proofs and every other field too
    // A cursor handed out by the embedded IdP continues at the same place.
    const rest = (await as.get(`${grants}?limit=100&cursor=${firstPage}`)).body.data as { id: string }[];
    expect(rest.map((g) => g.id)).toEqual(before.slice(3).map((g) => g.id));
    // The old key (retired, its tokens not yet expired) is still published; new grants come after.
    const jwks = (await api(moved.url).get(new URL(d.jwks_uri).pathname)).body;
    expect(jwks.keys.map((k: { kid: string }) => k.kid)).toContain(oldKid);
    const botToken = await loginWithKey(moved.url, USERS.bot, w.keys.bot.privateKey);
    const fresh = (await api(moved.url, botToken).post(grants, { ...ls(["after"]), grant_type: "once" }))
      .body;
    expect((await as.get(`${grants}?limit=1`)).body.data[0].id).toBe(fresh.id);
    // The feed keeps its seq (an SP's position stays valid) and continues after it.
    const movedFeed = (await api(moved.url).get("/api/revocations?after=0")).body.events as { seq: number }[];
    expect(movedFeed.map((e) => e.seq)).toEqual(feed.map((e) => e.seq));
    expect((await runApes(["idp", "users", "disable", USERS.carol, "--data", pgDir])).code).toBe(0);
    const next = (await api(moved.url).get(`/api/revocations?after=${feed[0]!.seq}`)).body.events;
    expect(next.map((e: { seq: number }) => e.seq)).toEqual([feed[0]!.seq + 1]);
    const clients = await runApes(["--json", "idp", "clients", "list", "--data", pgDir]);
    expect(clients.stdout).toContain("https://sp.example/cb");
    const pgStore = await openTestStore(pgDir);
    try {
      expect(await pgStore.getSubscription("sub-1")).toMatchObject({
        events: ["pending", "decided"],
        secret: "k",
      });
      // The copied row, and the one the moved IdP wrote for the grant created on it (bot's, alice subscribed).
      const copied = await pgStore.listNotifications({ limit: 10 });
      const row = copied.find((r) => r.key === "t.1");
      expect(row).toMatchObject({ status: "pending", subscriptionId: "sub-1" });
      expect(copied.some((r) => r.key === `${fresh.id}.pending.sub-1`)).toBe(true);
      // New rows continue after the copied ids.
      await pgStore.enqueueNotifications([
        { key: "t.2", subscriptionId: "sub-1", event: "test", payload: "{}", createdAt: 7 },
      ]);
      const added = (await pgStore.listNotifications({ limit: 10 })).find((r) => r.key === "t.2");
      expect(added!.id).toBeGreaterThan(row!.id);
      // The key pair is in the database, sealed, for every instance (the same one browsers subscribed to).
      const kept = await (pgStore as PostgresStore).sealedSetting("vapid", async () => "made anew");
      expect(JSON.parse(kept)).toEqual(vapid);
    } finally {
      await pgStore.close();
    }
  });

  it("refuses a bad --from and a missing key file", async () => {
    const bad = await runApes(["idp", "migrate", "--from", "mysql", "x", "--to", "postgres://u@h/db"]);
    expect(bad.code).toBe(2);
    const nokey = await runApes(["idp", "migrate", "--from", "sqlite", "x", "--to", "postgres://u@h/db"]);
    expect(nokey.code).toBe(2);
    expect(nokey.stderr).toMatch(/database-key-file/);
    const pw = await runApes([
      "idp",
      "migrate",
      "--from",
      "sqlite",
      "x",
      "--to",
      "postgres://u:p@h/db",
      "--database-key-file",
      "k",
    ]);
    expect(pw.code).toBe(78);
  });
});
