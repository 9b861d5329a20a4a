import { mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterEach, describe, expect, it } from "vitest";
import { Keyring, rotateKeys } from "../../idp/keys.ts";
import { withReadCache } from "../../idp/store/cache.ts";
import { openSqliteStore, type SqliteStore } from "../../idp/store/sqlite.ts";
import type { Grant } from "../../protocol/types.ts";

const stores: SqliteStore[] = [];
const open = (dir = join(mkdtempSync(join(tmpdir(), "apes-store-")), "d")) => {
  const s = openSqliteStore(dir);
  stores.push(s);
  return { s, dir };
};
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
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

describe("sqlite store", () => {
  it("creates the data dir 0700 and the db 0600, and migrates idempotently", () => {
    const { s, dir } = open();
    s.close();
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, "idp.sqlite")).mode & 0o777).toBe(0o600);
    const again = open(dir).s;
    expect(again.listUsers()).toEqual([]);
  });

  it("paginates newest first across equal timestamps without skipping or repeating", () => {
    const { s } = open();
    const ids: string[] = [];
    s.transaction(() => {
      for (let i = 0; i < 37; i++)
        ids.push(s.insertGrant({ grant: g(i % 2 ? "a" : "b", 1000 + Math.floor(i / 10)) }).grant.id);
    });
    for (const requesters of [undefined, ["a", "b"]]) {
      const seen: string[] = [];
      let before: { createdAt: number; seq: number } | undefined;
      for (let page = 0; page < 20; page++) {
        const r = s.queryGrants({
          ...(requesters ? { requesters } : {}),
          limit: 4,
          ...(before ? { before } : {}),
        });
        seen.push(...r.items.map((i) => i.grant.id));
        if (!r.hasMore) break;
        const last = r.items.at(-1)!;
        before = { createdAt: last.grant.created_at, seq: last.seq };
      }
      expect(seen).toEqual([...ids].reverse());
    }
    expect(s.queryGrants({ requesters: ["a"], status: "pending", limit: 100 }).items.length).toBe(18);
    expect(s.queryGrants({ requesters: [], limit: 100 }).items).toEqual([]);
  });

  it("transitions are compare-and-set on the status", () => {
    const { s } = open();
    const { grant } = s.insertGrant({ grant: g("a", 1) });
    const approved = s.transition(grant.id, {
      from: ["pending"],
      to: "approved",
      decidedBy: "x",
      decidedAt: 2,
    });
    expect(approved?.grant).toMatchObject({ status: "approved", decided_by: "x", decided_at: 2 });
    expect(approved?.version).toBe(2);
    expect(s.transition(grant.id, { from: ["pending"], to: "denied" })).toBeUndefined();
    expect(s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 3 })?.grant.used_at).toBe(3);
    expect(s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 4 })).toBeUndefined();
  });

  it("rewrites grant_type and duration together on an override", () => {
    const { s } = open();
    const { grant } = s.insertGrant({ grant: g("a", 1) });
    const t = s.transition(grant.id, {
      from: ["pending"],
      to: "approved",
      grantType: "timed",
      duration: 60,
      expiresAt: 61,
    });
    expect(t?.grant.request).toMatchObject({ grant_type: "timed", duration: 60 });
    expect(t?.grant.expires_at).toBe(61);
  });

  it("finds reusable approved timed/always grants by match key only while unexpired", () => {
    const { s } = open();
    const always = g("a", 1, { status: "approved" });
    always.request.grant_type = "always";
    s.insertGrant({ grant: always, matchKey: "k" });
    const once = g("a", 2, { status: "approved" });
    s.insertGrant({ grant: once, matchKey: "k2" });
    const timed = g("a", 3, { status: "approved", expires_at: 100 });
    timed.request.grant_type = "timed";
    s.insertGrant({ grant: timed, matchKey: "k3" });
    expect(s.findReusable("a", "k", 50)?.grant.id).toBe(always.id);
    expect(s.findReusable("b", "k", 50)).toBeUndefined();
    expect(s.findReusable("a", "k2", 50)).toBeUndefined();
    expect(s.findReusable("a", "k3", 50)?.grant.id).toBe(timed.id);
    expect(s.findReusable("a", "k3", 100)).toBeUndefined();
    expect(s.expireDue(100)).toEqual([timed.id]);
    expect(s.getGrant(timed.id)?.grant.status).toBe("expired");
  });

  it("spent challenge nonces and jtis are single use until they expire", () => {
    const { s } = open();
    expect(s.spendChallenge("n1", "a@x", 100)).toBe(true);
    expect(s.spendChallenge("n1", "a@x", 100)).toBe(false);
    expect(s.spendChallenge("n2", "a@x", 100)).toBe(true);
    expect(s.useJti("j", 100)).toBe(true);
    expect(s.useJti("j", 100)).toBe(false);
    s.purgeExpired(99);
    expect(s.spendChallenge("n1", "a@x", 100)).toBe(false);
    s.purgeExpired(101);
    expect(s.useJti("j", 200)).toBe(true);
    // Only after its challenge expired can a nonce record go (and the challenge no longer opens then).
    expect(s.spendChallenge("n1", "a@x", 200)).toBe(true);
  });

  it("users, approvers and subordinates", () => {
    const { s } = open();
    s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
    s.addUser({ email: "bob@x", kind: "human", createdAt: 1, admin: true });
    s.addUser({ email: "bot@x", kind: "agent", owner: "alice@x", approvers: ["bob@x"], createdAt: 1 });
    s.addUser({ email: "dave@x", kind: "human", approvers: ["alice@x"], createdAt: 1 });
    expect(s.getUser("bot@x")).toMatchObject({ kind: "agent", owner: "alice@x", approvers: ["bob@x"] });
    expect(s.subordinatesOf("alice@x").sort()).toEqual(["bot@x", "dave@x"]);
    expect(s.subordinatesOf("bob@x")).toEqual(["bot@x"]);
    expect(() => s.addUser({ email: "alice@x", kind: "human", createdAt: 2 })).toThrow();
    expect(s.setDisabled("bot@x", true)).toBe(true);
    expect(s.getUser("bot@x")?.disabled).toBe(true);
    expect(s.setDisabled("nobody@x", true)).toBe(false);
  });
});

describe("keyring", () => {
  it("creates a key on first use, rotates, keeps the old key until its tokens expire", () => {
    const { s, dir } = open();
    const ring = new Keyring(s, 1000);
    const first = ring.activeKid();
    ring.signingKey(1000, 1300); // a token valid until 1300
    // Another process rotates.
    const other = openSqliteStore(dir);
    const rec = rotateKeys(other, 1100);
    other.close();
    expect(ring.signingKey(1100, 1400).kid).toBe(rec.kid);
    expect(
      ring
        .jwks(1200)
        .keys.map((k) => k.kid)
        .sort(),
    ).toEqual([first, rec.kid].sort());
    expect(ring.publicKey(first, 1299)).toBeDefined();
    // The exact last expiry is recorded: the old key is gone the moment its last token expired.
    expect(ring.publicKey(first, 1300)).toBeUndefined();
    expect(ring.jwks(1300).keys.map((k) => k.kid)).toEqual([rec.kid]);
    // Also for a fresh process reading the record.
    const reader = openSqliteStore(dir);
    stores.push(reader);
    expect(reader.listSigningKeys().find((k) => k.kid === first)?.maxExp).toBe(1300);
    expect(ring.publicKey("unknown", 1200)).toBeUndefined();
  });
});

describe("group commit", () => {
  it("batches writes until setImmediate; other connections see them only after flushed()", async () => {
    const { s, dir } = open();
    s.enableGroupCommit();
    const reader = openSqliteStore(dir);
    stores.push(reader);
    const { grant } = s.insertGrant({ grant: g("a", 1) });
    s.transition(grant.id, { from: ["pending"], to: "approved", decidedBy: "x", decidedAt: 2 });
    const flushed = s.flushed();
    expect(flushed).toBeInstanceOf(Promise);
    // The writer's own reads see the batch; another connection does not, yet.
    expect(s.getGrant(grant.id)?.grant.status).toBe("approved");
    expect(reader.getGrant(grant.id)).toBeUndefined();
    await flushed;
    expect(s.flushed()).toBeUndefined();
    expect(reader.getGrant(grant.id)?.grant.status).toBe("approved");
  });

  it("a failing transaction inside a batch rolls back only itself", async () => {
    const { s, dir } = open();
    s.enableGroupCommit();
    s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
    // The duplicate approver row fails after the user row was written: the savepoint undoes both.
    expect(() =>
      s.transaction(() => {
        s.addUser({ email: "bob@x", kind: "human", createdAt: 1 });
        s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
      }),
    ).toThrow();
    await s.flushed();
    const reader = openSqliteStore(dir);
    stores.push(reader);
    expect(reader.listUsers().map((u) => u.email)).toEqual(["alice@x"]);
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

  it("serves a delegation from memory until this process changes it", () => {
    const { s } = open();
    const cached = withReadCache(s);
    const { grant } = cached.insertGrant({ grant: delegation() });
    expect(cached.getGrant(grant.id)?.grant.status).toBe("approved");
    expect(cached.getGrant(grant.id)).toBe(cached.getGrant(grant.id)); // one shared, frozen object
    expect(Object.isFrozen(cached.getGrant(grant.id)?.grant.request)).toBe(true);
    cached.transition(grant.id, { from: ["approved"], to: "revoked" });
    expect(cached.getGrant(grant.id)?.grant.status).toBe("revoked");
  });

  it("drops everything when another process committed (the offline admin commands)", () => {
    const { s, dir } = open();
    const cached = withReadCache(s);
    s.addUser({ email: "bot@x", kind: "human", createdAt: 1 });
    const { grant } = cached.insertGrant({ grant: delegation() });
    expect(cached.getGrant(grant.id)?.grant.status).toBe("approved");
    expect(cached.getUser("bot@x")?.disabled).toBe(false);
    const other = openSqliteStore(dir);
    other.transition(grant.id, { from: ["approved"], to: "revoked" });
    other.setDisabled("bot@x", true);
    other.close();
    expect(cached.getGrant(grant.id)?.grant.status).toBe("revoked");
    expect(cached.getUser("bot@x")?.disabled).toBe(true);
  });

  it("drops delegations the expiry sweep expired", () => {
    const { s } = open();
    const cached = withReadCache(s);
    const { grant } = cached.insertGrant({ grant: { ...delegation(), expires_at: 10 } });
    expect(cached.getGrant(grant.id)?.grant.status).toBe("approved");
    expect(cached.expireDue(10)).toEqual([grant.id]);
    expect(cached.getGrant(grant.id)?.grant.status).toBe("expired");
  });
});

describe("acting party of delegated writes", () => {
  it("records who acted on creation and on a decision, and clears it for the principal's own", () => {
    const { s } = open();
    const stored = s.insertGrant({ grant: g("alice@x", 1), actingParty: "bot@x" });
    expect(stored.createdAct).toBe("bot@x");
    expect(s.getGrant(stored.grant.id)).toMatchObject({ createdAct: "bot@x" });
    const revoked = s.transition(stored.grant.id, { from: ["pending"], to: "revoked", actingParty: "bot@x" });
    expect(revoked).toMatchObject({ createdAct: "bot@x", decidedAct: "bot@x" });
    const own = s.insertGrant({ grant: g("alice@x", 2) });
    expect(s.getGrant(own.grant.id)).not.toHaveProperty("createdAct");
    s.transition(own.grant.id, {
      from: ["pending"],
      to: "approved",
      decidedBy: "alice@x",
      actingParty: null,
    });
    expect(s.getGrant(own.grant.id)).not.toHaveProperty("decidedAct");
  });
});

describe("identities in the store (protocol/names.ts)", () => {
  it("looks users up by their normalised identity and refuses to store any other form", () => {
    const { s } = open();
    s.addUser({ email: "caf\u00e9@x", kind: "human", createdAt: 1 });
    expect(s.getUser("cafe\u0301@x")?.email).toBe("caf\u00e9@x");
    expect(s.getUser("CAF\u00c9@X")?.email).toBe("caf\u00e9@x");
    expect(s.getUser("caf\u00e9@x\u202e")).toBeUndefined();
    expect(s.setDisabled("CAFE\u0301@x", true)).toBe(true);
    expect(() => s.addUser({ email: "Bob@x", kind: "human", createdAt: 1 })).toThrow(/normalised/);
    expect(() => s.addUser({ email: "b\u0131b@x", kind: "human", createdAt: 1 })).toThrow(/normalised/);
  });

  it("re-keys users stored before normalisation when it opens the data dir", () => {
    const { s, dir } = open();
    s.close();
    // As an older IdP stored them: a decomposed café owning an agent, and names refused today.
    const db = new DatabaseSync(join(dir, "idp.sqlite"));
    const add = db.prepare("INSERT INTO users (email, kind, owner, created_at) VALUES (?, ?, ?, 1)");
    add.run("cafe\u0301@x", "human", null);
    add.run("bot@x", "agent", "cafe\u0301@x");
    add.run("eve@x\u202e", "human", null);
    db.prepare("INSERT INTO approvers (subject, approver) VALUES (?, ?)").run("bot@x", "cafe\u0301@x");
    db.close();
    const again = open(dir).s;
    expect(again.getUser("caf\u00e9@x")?.email).toBe("caf\u00e9@x");
    expect(again.getUser("bot@x")).toMatchObject({ owner: "caf\u00e9@x", approvers: ["caf\u00e9@x"] });
    expect(again.subordinatesOf("cafe\u0301@x")).toEqual(["bot@x"]);
    expect(again.getUser("eve@x\u202e")).toBeUndefined();
    expect(again.listUsers().map((u) => u.email)).toEqual(["bot@x", "caf\u00e9@x", "eve@x\u202e"]);
  });
});
