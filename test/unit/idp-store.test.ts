import { createPrivateKey } from "node:crypto";
import { mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, describe, expect, it } from "vitest";
import { Keyring, newSigningKeyRecord, rotateKeys } from "../../idp/keys.ts";
import { withReadCache } from "../../idp/store/cache.ts";
import { MIGRATIONS, migrate } from "../../idp/store/sqlite/migrations.ts";
import { openSqliteStore, type SqliteOptions } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { signJwt } from "../../idp/tokens.ts";
import type { Grant } from "../../protocol/types.ts";
import { expectListingsOf, upgradeRows } from "../helpers/grants.ts";

/**
 * What is particular to the SQLite store and to the read cache. What every store must do is in the
 * contract suite (test/contract/store/), which runs against SQLite too.
 */

const stores: Store[] = [];
const open = (dir = join(mkdtempSync(join(tmpdir(), "apes-store-")), "d"), options: SqliteOptions = {}) => {
  const s = openSqliteStore(dir, options);
  stores.push(s);
  return { s, dir };
};
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

let n = 0;
const g = (requester: string, created_at: number, extra: Partial<Grant> = {}): Grant => ({
  id: `00000000-0000-4000-8000-${String(++n).padStart(12, "0")}`,
  type: "command",
  request: { requester, target_host: "h", audience: "escapes", grant_type: "once", command: ["ls"] },
  status: "pending",
  created_at,
  ...extra,
});

/** `s` with some members replaced (the rest bound to `s`). */
const replacing = (s: Store, members: Partial<Record<keyof Store, unknown>>): Store =>
  new Proxy(s, {
    get(target, key) {
      if (key in members) return members[key as keyof Store];
      const value = Reflect.get(target, key);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });

/** The SQLite store with reads that answer a turn later, as a database across a network does. */
const slowReads = (s: Store): Store => {
  const later =
    <A extends unknown[], T>(read: (...args: A) => Promise<T>) =>
    (...args: A) =>
      read.apply(s, args).then((v) => new Promise<T>((resolve) => setImmediate(() => resolve(v))));
  return replacing(s, {
    getUser: later(s.getUser),
    getGrant: later(s.getGrant),
    subordinatesOf: later(s.subordinatesOf),
    listSigningKeys: later(s.listSigningKeys),
  });
};

describe("sqlite store", () => {
  it("creates the data dir 0700 and the db 0600, and migrates idempotently", async () => {
    const { s, dir } = open();
    await s.close();
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, "idp.sqlite")).mode & 0o777).toBe(0o600);
    const again = open(dir).s;
    expect(await again.listUsers()).toEqual([]);
  });

  it("numbers its migrations 1, 2, 3 ... and upgrades an older database keeping its data", async () => {
    expect(MIGRATIONS.map((m) => m.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
    const dir = mkdtempSync(join(tmpdir(), "apes-store-"));
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    migrate(db, MIGRATIONS.slice(0, 2)); // a data dir from before the acting-party columns
    db.prepare(
      "INSERT INTO grants (id, type, requester, status, grant_type, request, created_at) VALUES (?, 'command', 'a', 'pending', 'once', ?, 1)",
    ).run(g("a", 1).id, JSON.stringify(g("a", 1).request));
    expect((db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(2);
    db.close();
    const { s } = open(dir);
    const page = await s.queryGrants({ limit: 10 });
    expect(page.items).toHaveLength(1);
    expect(page.items[0]).not.toHaveProperty("createdAct");
    const check = new DatabaseSync(join(dir, "idp.sqlite"), { readOnly: true });
    expect((check.prepare("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(
      MIGRATIONS.length,
    );
    check.close();
  });

  it("upgrades a data dir that had grants_by_status: every grant and listing as before", async () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-store-"));
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    migrate(db, MIGRATIONS.slice(0, 9));
    const add = db.prepare(
      "INSERT INTO grants (id, type, requester, status, grant_type, request, delegator, delegate, created_at) VALUES (?, ?, ?, ?, 'once', ?, ?, ?, ?)",
    );
    const rows = upgradeRows();
    for (const r of rows)
      add.run(r.id, r.type, r.requester, r.status, r.request, r.delegator, r.delegate, r.createdAt);
    const before = db.prepare("SELECT * FROM grants ORDER BY seq").all();
    db.close();
    const { s } = open(dir);
    await expectListingsOf(s, rows);
    await s.close();
    const check = new DatabaseSync(join(dir, "idp.sqlite"), { readOnly: true });
    expect(check.prepare("SELECT * FROM grants ORDER BY seq").all()).toEqual(before);
    const indexes = (
      check.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'grants'").all() as {
        name: string;
      }[]
    ).map((r) => r.name);
    expect(indexes).not.toContain("grants_by_status");
    expect(indexes).toContain("grants_delegations");
    check.close();
  });

  it("refuses a data dir migrated by a newer apes, changing nothing", async () => {
    const { s, dir } = open();
    await s.close();
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    db.exec(`PRAGMA user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    expect(() => openSqliteStore(dir)).toThrow(/newer than this apes knows/);
    const check = new DatabaseSync(join(dir, "idp.sqlite"), { readOnly: true });
    expect((check.prepare("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(
      MIGRATIONS.length + 1,
    );
    check.close();
  });

  it("re-keys users stored before normalisation when it opens the data dir", async () => {
    const { s, dir } = open();
    await s.close();
    // As an older IdP stored them: a decomposed café owning an agent, and names refused today.
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    const add = db.prepare("INSERT INTO users (email, kind, owner, created_at) VALUES (?, ?, ?, 1)");
    add.run("cafe\u0301@x", "human", null);
    add.run("bot@x", "agent", "cafe\u0301@x");
    add.run("eve@x\u202e", "human", null);
    db.prepare("INSERT INTO approvers (subject, approver) VALUES (?, ?)").run("bot@x", "cafe\u0301@x");
    db.close();
    const again = open(dir).s;
    expect((await again.getUser("caf\u00e9@x"))?.email).toBe("caf\u00e9@x");
    expect(await again.getUser("bot@x")).toMatchObject({ owner: "caf\u00e9@x", approvers: ["caf\u00e9@x"] });
    expect(await again.subordinatesOf("cafe\u0301@x")).toEqual(["bot@x"]);
    expect(await again.getUser("eve@x\u202e")).toBeUndefined();
    expect((await again.listUsers()).map((u) => u.email)).toEqual(["bot@x", "caf\u00e9@x", "eve@x\u202e"]);
  });
});

describe("group commit", () => {
  it("batches writes until setImmediate; other connections see them only after flush()", async () => {
    const { s, dir } = open(undefined, { groupCommit: true });
    const reader = open(dir).s;
    const { grant } = await s.insertGrant({ grant: g("a", 1) });
    await s.transition(grant.id, { from: ["pending"], to: "approved", decidedBy: "x", decidedAt: 2 });
    const flushed = s.lifecycle.flush?.();
    // The writer's own reads see the batch; another connection does not, yet.
    expect((await s.getGrant(grant.id))?.grant.status).toBe("approved");
    expect(await reader.getGrant(grant.id)).toBeUndefined();
    await flushed;
    expect((await reader.getGrant(grant.id))?.grant.status).toBe("approved");
  });

  it("a user whose rows fail half way is undone alone, the rest of its batch commits", async () => {
    const { s, dir } = open(undefined, { groupCommit: true });
    // Another connection makes the approver row of bob fail after bob's user row was written.
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    db.exec(
      "CREATE TRIGGER refuse BEFORE INSERT ON approvers WHEN NEW.approver = 'boom@x' BEGIN SELECT RAISE(ABORT, 'refused'); END",
    );
    db.close();
    await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
    await expect(
      s.addUser({ email: "bob@x", kind: "human", approvers: ["alice@x", "boom@x"], createdAt: 1 }),
    ).rejects.toThrow(/refused/);
    expect(await s.getUser("bob@x")).toBeUndefined();
    await s.lifecycle.flush?.();
    const reader = open(dir).s;
    expect((await reader.listUsers()).map((u) => u.email)).toEqual(["alice@x"]);
  });

  it("close() commits what is pending", async () => {
    const { s, dir } = open(undefined, { groupCommit: true });
    await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
    await s.close();
    expect((await open(dir).s.getUser("alice@x"))?.email).toBe("alice@x");
  });
});

describe("read cache (the server's view of users and delegations)", () => {
  const delegation = (): Grant =>
    g("alice@x", 1, {
      type: "delegation",
      status: "approved",
      request: {
        requester: "alice@x",
        target_host: "*",
        audience: "apes-cli",
        grant_type: "always",
        delegator: "alice@x",
        delegate: "bot@x",
      },
    });

  it("serves a delegation from memory, one shared frozen object, until this process changes it", async () => {
    const { s } = open();
    const cached = withReadCache(s);
    const { grant } = await cached.insertGrant({ grant: delegation() });
    const first = await cached.getGrant(grant.id);
    expect(first?.grant.status).toBe("approved");
    expect(await cached.getGrant(grant.id)).toBe(first);
    expect(Object.isFrozen(first?.grant.request)).toBe(true);
    await cached.transition(grant.id, { from: ["approved"], to: "revoked" });
    expect((await cached.getGrant(grant.id))?.grant.status).toBe("revoked");
  });

  it("serves a command grant from its last write, and reads it again once another process changed it", async () => {
    const { s, dir } = open();
    const cached = withReadCache(s);
    const grant = g("bot@x", 1);
    const inserted = await cached.insertGrant({ grant });
    const first = await cached.getGrant(grant.id);
    // Frozen, and not the caller's own object, which stays its own.
    expect(first).toBe(inserted);
    expect(Object.isFrozen(first?.grant.request)).toBe(true);
    expect(Object.isFrozen(grant)).toBe(false);
    const approved = await cached.transition(grant.id, {
      from: ["pending"],
      to: "approved",
      decidedBy: "alice@x",
      decidedAt: 2,
    });
    expect(await cached.getGrant(grant.id)).toBe(approved);
    // Another process (no SqliteStore of this one: a raw connection) consumes it.
    const other = new DatabaseSync(join(dir, "idp.sqlite"));
    other.prepare("UPDATE grants SET status = 'used', version = version + 1 WHERE id = ?").run(grant.id);
    other.close();
    await new Promise((r) => setImmediate(r)); // the next request
    expect((await cached.getGrant(grant.id))?.grant.status).toBe("used");
    // A refused transition keeps nothing of the grant: the next read asks the store.
    expect(await cached.transition(grant.id, { from: ["pending"], to: "denied" })).toBeUndefined();
    expect((await cached.getGrant(grant.id))?.grant.status).toBe("used");
  });

  it("keeps the owner's notification subscriptions until one is added or removed", async () => {
    const { s, dir } = open();
    const cached = withReadCache(s);
    const sub = (id: string) => ({
      id,
      owner: "alice@x",
      channel: "webhook" as const,
      target: `https://hooks.example/${id}`,
      events: ["pending" as const],
      createdAt: 1,
    });
    const id1 = "00000000-0000-4000-8000-00000000aa01";
    const id2 = "00000000-0000-4000-8000-00000000aa02";
    await cached.addSubscription(sub(id1));
    expect((await cached.subscriptionsOf(["alice@x", "bob@x"])).map((x) => x.id)).toEqual([id1]);
    const again = await cached.subscriptionsOf(["alice@x"]);
    expect(Object.isFrozen(again[0])).toBe(true);
    await cached.addSubscription(sub(id2));
    expect((await cached.subscriptionsOf(["alice@x"])).map((x) => x.id)).toEqual([id1, id2]);
    expect(await cached.removeSubscription(id1)).toBe(true);
    expect((await cached.subscriptionsOf(["alice@x"])).map((x) => x.id)).toEqual([id2]);
    // Removed by another process: gone here at the next request.
    const other = new DatabaseSync(join(dir, "idp.sqlite"));
    other.prepare("DELETE FROM notify_subscriptions WHERE id = ?").run(id2);
    other.close();
    await new Promise((r) => setImmediate(r));
    expect(await cached.subscriptionsOf(["alice@x"])).toEqual([]);
  });

  it("keeps users, subscriptions and keys while another process writes grants, not once it changes them", async () => {
    const { s, dir } = open();
    await s.addUser({ email: "alice@x", kind: "human", publicKey: "ssh-ed25519 AAAA", createdAt: 1 });
    await s.addUser({
      email: "bot@x",
      kind: "agent",
      owner: "alice@x",
      publicKey: "ssh-ed25519 AAAB",
      createdAt: 1,
    });
    await s.addSigningKey(newSigningKeyRecord(1));
    const reads = { users: 0, subordinates: 0, subscriptions: 0, keys: 0 };
    const counting =
      <A extends unknown[], R>(kind: keyof typeof reads, fn: (...a: A) => R) =>
      (...a: A) => {
        reads[kind]++;
        return fn(...a);
      };
    const counted: Store = Object.assign(Object.create(s) as Store, {
      getUser: counting("users", (e: string) => s.getUser(e)),
      subordinatesOf: counting("subordinates", (e: string) => s.subordinatesOf(e)),
      subscriptionsOf: counting("subscriptions", (o: readonly string[]) => s.subscriptionsOf(o)),
      listSigningKeys: counting("keys", () => s.listSigningKeys()),
    });
    const cached = withReadCache(counted);
    const ring = await Keyring.open(cached, 1);
    const lookUp = async () => {
      await cached.getUser("bot@x");
      await cached.subordinatesOf("alice@x");
      await cached.subscriptionsOf(["alice@x"]);
      await ring.refresh(2);
    };
    await lookUp();
    const other = new DatabaseSync(join(dir, "idp.sqlite")); // another worker
    const otherGrant = g("bot@x", 3);
    other
      .prepare(
        "INSERT INTO grants (id, type, requester, status, grant_type, request, created_at) VALUES (?, 'command', 'bot@x', 'pending', 'once', ?, 3)",
      )
      .run(otherGrant.id, JSON.stringify(otherGrant.request));
    await new Promise((r) => setImmediate(r)); // the next request
    await lookUp();
    expect(reads).toEqual({ users: 1, subordinates: 1, subscriptions: 1, keys: 1 });
    // Its grant is read from the store, not missed.
    expect((await cached.getGrant(otherGrant.id))?.grant.status).toBe("pending");
    // A user, a subscription and a key changed there: each read again here.
    other.prepare("UPDATE users SET disabled = 1 WHERE email = 'bot@x'").run();
    await new Promise((r) => setImmediate(r));
    expect((await cached.getUser("bot@x"))?.disabled).toBe(true);
    expect(reads.users).toBe(2);
    other
      .prepare(
        "INSERT INTO notify_subscriptions (id, owner, channel, target, secret, events, created_at) VALUES ('00000000-0000-4000-8000-00000000bb01', 'alice@x', 'webhook', 'https://hooks.example/x', NULL, '[\"pending\"]', 1)",
      )
      .run();
    other.prepare("UPDATE signing_keys SET max_exp = max_exp + 1").run();
    await new Promise((r) => setImmediate(r));
    await lookUp();
    expect(reads).toMatchObject({ subscriptions: 2, keys: 2 });
    expect((await cached.subscriptionsOf(["alice@x"])).map((x) => x.id)).toEqual([
      "00000000-0000-4000-8000-00000000bb01",
    ]);
    other.close();
  });

  it("reads data_version once per batch while its write lock is held, again at the request after its commit", async () => {
    const { s, dir } = open(undefined, { groupCommit: true });
    const pragma = (s as unknown as { q(sql: string): { get(): unknown } }).q("PRAGMA data_version");
    const get = pragma.get.bind(pragma);
    let reads = 0;
    pragma.get = () => {
      reads++;
      return get();
    };
    await s.insertGrant({ grant: g("a", 1) }); // opens a batch (BEGIN IMMEDIATE)
    s.lifecycle.beginRequest!();
    const first = s.lifecycle.changeMarker!();
    for (let i = 0; i < 5; i++) {
      s.lifecycle.beginRequest!();
      expect(s.lifecycle.changeMarker!()).toBe(first);
    }
    expect(reads).toBe(1);
    await s.lifecycle.flush!();
    const raw = new DatabaseSync(join(dir, "idp.sqlite")); // another process, once the lock is free
    raw.exec("CREATE TABLE t1 (x)");
    raw.close();
    s.lifecycle.beginRequest!();
    expect(s.lifecycle.changeMarker!()).not.toBe(first);
    expect(reads).toBe(2);
  });

  it("reads data_version once per request, in the next turn outside requests, at once after a commit here", async () => {
    const { s, dir } = open();
    const marker = () => s.lifecycle.changeMarker!();
    const raw = new DatabaseSync(join(dir, "idp.sqlite")); // another process
    const before = marker();
    raw.exec("CREATE TABLE t1 (x)");
    // Committed while a request was handled: counts from the next request on.
    expect(marker()).toBe(before);
    s.lifecycle.beginRequest!();
    const next = marker();
    expect(next).not.toBe(before);
    // Outside requests: from the next event-loop turn on.
    raw.exec("CREATE TABLE t2 (x)");
    expect(marker()).toBe(next);
    await new Promise((r) => setImmediate(r));
    const later = marker();
    expect(later).not.toBe(next);
    raw.close();
    // A commit by another store of this process counts at once.
    const other = open(dir).s;
    await other.addUser({ email: "carol@x", kind: "human", createdAt: 1 });
    expect(marker()).not.toBe(later);
  });

  it("is not used for a store that cannot say when another process changed the data", () => {
    const bare = replacing(open().s, { lifecycle: undefined });
    expect(withReadCache(bare)).toBe(bare);
  });

  it("keeps no value read while a write to it completed (a slow read racing a revocation)", async () => {
    const { s } = open();
    const cached = withReadCache(slowReads(s));
    await s.addUser({ email: "bot@x", kind: "human", createdAt: 1 });
    const { grant } = await cached.insertGrant({ grant: delegation() });
    // Each read starts before the write and answers after it, with what it read before.
    const [, revoked] = await Promise.all([
      cached.getGrant(grant.id),
      cached.transition(grant.id, { from: ["approved"], to: "revoked" }),
    ]);
    expect(revoked?.grant.status).toBe("revoked");
    expect((await cached.getGrant(grant.id))?.grant.status).toBe("revoked");
    await Promise.all([cached.getUser("bot@x"), cached.setDisabled("bot@x", true, 1)]);
    expect((await cached.getUser("bot@x"))?.disabled).toBe(true);
    await s.addUser({ email: "bot2@x", kind: "agent", owner: "alice@x", createdAt: 1 });
    await Promise.all([
      cached.subordinatesOf("alice@x"),
      cached.addUser({ email: "bot3@x", kind: "agent", owner: "alice@x", createdAt: 1 }),
    ]);
    expect((await cached.subordinatesOf("alice@x")).sort()).toEqual(["bot2@x", "bot3@x"]);
  });
});

describe("keyring over a store whose reads take their time", () => {
  it("a token naming a key another process just rotated in waits for a re-read already under way", async () => {
    const { s, dir } = open();
    const ring = await Keyring.open(slowReads(s), 1000);
    const rec = await rotateKeys(open(dir).s, 1001);
    const token = signJwt(
      { sub: "a", exp: 2000 },
      { kid: rec.kid, privateKey: createPrivateKey(rec.privateKey) },
    );
    // The JWKS request starts the re-read; the token's verification arrives while it runs.
    const [jwks, claims] = await Promise.all([ring.jwks(1002), ring.verify(token, { now: 1002, leeway: 0 })]);
    expect(jwks.keys.map((k) => k.kid)).toEqual([rec.kid]);
    expect(claims).toMatchObject({ sub: "a" });
  });
});
