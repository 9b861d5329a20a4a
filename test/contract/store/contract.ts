import { createPrivateKey } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { Keyring, rotateKeys } from "../../../idp/keys.ts";
import type {
  AuthCodeRecord,
  DeviceCodeRecord,
  NewNotification,
  RefreshTokenRecord,
  Store,
  SubscriptionRecord,
  Transition,
} from "../../../idp/store/types.ts";
import { signJwt } from "../../../idp/tokens.ts";
import type { Grant } from "../../../protocol/types.ts";
import { webStoreContract } from "./web-contract.ts";

/**
 * The contract every Store (idp/store/types.ts) must meet, whatever the database: run it with
 * `storeContract(name, open)` from a `*.test.ts` next to this file, one per implementation and
 * configuration. `open` makes a store on new, empty data; its `connect` opens another, independent
 * handle on the same data, as another process (the offline admin commands) would.
 */
export interface OpenedStore {
  store: Store;
  connect(): Promise<Store>;
}

let n = 0;
const id = () => `00000000-0000-4000-8000-${String(++n).padStart(12, "0")}`;
const command = (requester: string, created_at: number, extra: Partial<Grant> = {}): Grant => ({
  id: id(),
  type: "command",
  request: { requester, target_host: "h", audience: "escapes", grant_type: "once", command: ["ls"] },
  status: "pending",
  created_at,
  ...extra,
});
const delegation = (
  delegator: string,
  delegate: string,
  created_at = 1,
  extra: Partial<Grant> = {},
): Grant => ({
  id: id(),
  type: "delegation",
  status: "approved",
  request: {
    requester: delegator,
    target_host: "*",
    audience: "apes-cli",
    grant_type: "always",
    delegator,
    delegate,
  },
  created_at,
  decided_by: delegator,
  decided_at: created_at,
  ...extra,
});

/** Every write made so far is committed (a store batching writes commits them now). */
const committed = async (s: Store) => {
  await s.lifecycle?.flush?.();
};

/** This handle has heard of every change committed anywhere so far (a store notified of them). */
const caughtUp = async (s: Store) => {
  await s.lifecycle?.sync?.();
};

export function storeContract(name: string, open: () => Promise<OpenedStore>): void {
  describe(`store contract: ${name}`, () => {
    const handles: Store[] = [];
    const fresh = async () => {
      const opened = await open();
      handles.push(opened.store);
      return {
        s: opened.store,
        connect: async () => {
          const other = await opened.connect();
          handles.push(other);
          return other;
        },
      };
    };
    afterEach(async () => {
      for (const h of handles.splice(0).reverse()) await h.close();
    });

    describe("users", () => {
      it("adds, looks up, lists (by email) and disables users with their approvers", async () => {
        const { s } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1, name: "Alice" });
        await s.addUser({ email: "bob@x", kind: "human", createdAt: 2, admin: true });
        await s.addUser({
          email: "bot@x",
          kind: "agent",
          owner: "alice@x",
          approvers: ["bob@x"],
          publicKey: "ssh-ed25519 AAAA bot",
          fingerprint: "SHA256:f",
          createdAt: 3,
        });
        expect(await s.getUser("bot@x")).toEqual({
          email: "bot@x",
          kind: "agent",
          owner: "alice@x",
          approvers: ["bob@x"],
          admin: false,
          disabled: false,
          publicKey: "ssh-ed25519 AAAA bot",
          fingerprint: "SHA256:f",
          createdAt: 3,
        });
        expect(await s.getUser("alice@x")).toEqual({
          email: "alice@x",
          kind: "human",
          approvers: [],
          admin: false,
          disabled: false,
          name: "Alice",
          createdAt: 1,
        });
        expect(await s.getUser("nobody@x")).toBeUndefined();
        expect((await s.listUsers()).map((u) => [u.email, u.admin, u.approvers])).toEqual([
          ["alice@x", false, []],
          ["bob@x", true, []],
          ["bot@x", false, ["bob@x"]],
        ]);
        expect(await s.setDisabled("bot@x", true, 1)).toBe(true);
        expect((await s.getUser("bot@x"))?.disabled).toBe(true);
        expect((await s.listUsers()).find((u) => u.email === "bot@x")?.disabled).toBe(true);
        expect(await s.setDisabled("bot@x", false, 1)).toBe(true);
        expect((await s.getUser("bot@x"))?.disabled).toBe(false);
        expect(await s.setDisabled("nobody@x", true, 1)).toBe(false);
      });

      it("refuses a second user of the same name, also when added concurrently", async () => {
        const { s } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
        await expect(s.addUser({ email: "alice@x", kind: "agent", createdAt: 2 })).rejects.toThrow();
        expect((await s.getUser("alice@x"))?.kind).toBe("human");
        const results = await Promise.allSettled(
          Array.from({ length: 10 }, (_, i) => s.addUser({ email: "carol@x", kind: "human", createdAt: i })),
        );
        expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
        expect((await s.listUsers()).filter((u) => u.email === "carol@x")).toHaveLength(1);
      });

      it("subordinates: agents a human owns and users naming it as approver, each once", async () => {
        const { s } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
        await s.addUser({ email: "bob@x", kind: "human", createdAt: 1, admin: true });
        await s.addUser({
          email: "bot@x",
          kind: "agent",
          owner: "alice@x",
          approvers: ["bob@x"],
          createdAt: 1,
        });
        await s.addUser({ email: "dave@x", kind: "human", approvers: ["alice@x"], createdAt: 1 });
        await s.addUser({
          email: "own@x",
          kind: "agent",
          owner: "alice@x",
          approvers: ["alice@x"],
          createdAt: 1,
        });
        expect((await s.subordinatesOf("alice@x")).sort()).toEqual(["bot@x", "dave@x", "own@x"]);
        expect(await s.subordinatesOf("bob@x")).toEqual(["bot@x"]);
        expect(await s.subordinatesOf("dave@x")).toEqual([]);
        expect(await s.subordinatesOf("nobody@x")).toEqual([]);
        await s.addUser({ email: "new@x", kind: "agent", owner: "bob@x", createdAt: 2 });
        expect((await s.subordinatesOf("bob@x")).sort()).toEqual(["bot@x", "new@x"]);
      });

      it("looks users up by their normalised identity and stores no other form", async () => {
        const { s } = await fresh();
        await s.addUser({ email: "caf\u00e9@x", kind: "human", createdAt: 1 });
        await s.addUser({ email: "bot@x", kind: "agent", owner: "caf\u00e9@x", createdAt: 1 });
        expect((await s.getUser("cafe\u0301@x"))?.email).toBe("caf\u00e9@x");
        expect((await s.getUser("CAF\u00c9@X"))?.email).toBe("caf\u00e9@x");
        expect(await s.getUser("caf\u00e9@x\u202e")).toBeUndefined();
        expect(await s.subordinatesOf("CAFE\u0301@x")).toEqual(["bot@x"]);
        expect(await s.setDisabled("CAFE\u0301@x", true, 1)).toBe(true);
        expect((await s.getUser("caf\u00e9@x"))?.disabled).toBe(true);
        await expect(s.addUser({ email: "Bob@x", kind: "human", createdAt: 1 })).rejects.toThrow(
          /normalised/,
        );
        await expect(s.addUser({ email: "b\u0131b@x", kind: "human", createdAt: 1 })).rejects.toThrow(
          /normalised/,
        );
        await expect(
          s.addUser({ email: "eve@x", kind: "agent", owner: "Caf\u00e9@x", createdAt: 1 }),
        ).rejects.toThrow(/normalised/);
        expect((await s.listUsers()).map((u) => u.email)).toEqual(["bot@x", "caf\u00e9@x"]);
      });

      it("a change made through another handle is seen at the next lookup", async () => {
        const { s, connect } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
        await s.addUser({ email: "bot@x", kind: "agent", owner: "alice@x", createdAt: 1 });
        expect((await s.getUser("bot@x"))?.disabled).toBe(false);
        expect(await s.subordinatesOf("alice@x")).toEqual(["bot@x"]);
        await committed(s);
        const other = await connect();
        expect(await other.setDisabled("bot@x", true, 1)).toBe(true);
        await other.addUser({ email: "bot2@x", kind: "agent", owner: "alice@x", createdAt: 2 });
        await committed(other);
        expect((await s.getUser("bot@x"))?.disabled).toBe(true);
        expect((await s.subordinatesOf("alice@x")).sort()).toEqual(["bot2@x", "bot@x"]);
      });

      it("a lookup under way while the user is disabled does not outlive the change", async () => {
        const { s } = await fresh();
        await s.addUser({ email: "bot@x", kind: "human", createdAt: 1 });
        const during = s.getUser("bot@x");
        const disabled = s.setDisabled("bot@x", true, 1);
        await Promise.all([during, disabled]);
        expect((await s.getUser("bot@x"))?.disabled).toBe(true);
      });
    });

    describe("signing keys and the keyring", () => {
      const key = (kid: string, createdAt: number) => ({
        kid,
        privateKey: `pem ${kid}`,
        createdAt,
        maxExp: 0,
      });

      it("lists keys oldest first; retires all but one; raises max_exp, never lowers it", async () => {
        const { s } = await fresh();
        await s.addSigningKey(key("b", 2));
        await s.addSigningKey(key("a", 2));
        await s.addSigningKey(key("c", 1));
        expect((await s.listSigningKeys()).map((k) => k.kid)).toEqual(["c", "a", "b"]);
        await s.retireSigningKeys("b", 10);
        expect((await s.listSigningKeys()).map((k) => [k.kid, k.retiredAt])).toEqual([
          ["c", 10],
          ["a", 10],
          ["b", undefined],
        ]);
        await s.retireSigningKeys("a", 20); // a stays retired at 10
        expect((await s.listSigningKeys()).map((k) => k.retiredAt)).toEqual([10, 10, 20]);
        await s.raiseKeyMaxExp("b", 500);
        await s.raiseKeyMaxExp("b", 400);
        expect((await s.listSigningKeys()).find((k) => k.kid === "b")?.maxExp).toBe(500);
        expect((await s.listSigningKeys()).find((k) => k.kid === "b")).toEqual({
          kid: "b",
          privateKey: "pem b",
          createdAt: 2,
          retiredAt: 20,
          maxExp: 500,
        });
        await expect(s.addSigningKey(key("b", 3))).rejects.toThrow();
      });

      it("creates a key on first use, sees a rotation by another process, keeps the old key until its tokens expire", async () => {
        const { s, connect } = await fresh();
        const ring = await Keyring.open(s, 1000);
        const first = ring.activeKid();
        await ring.signingKey(1000, 1300); // a token valid until 1300
        await committed(s);
        // Another process rotates.
        const other = await connect();
        const rec = await rotateKeys(other, 1100);
        await committed(other);
        await caughtUp(s);
        expect((await ring.signingKey(1100, 1400)).kid).toBe(rec.kid);
        expect((await ring.jwks(1200)).keys.map((k) => k.kid).sort()).toEqual([first, rec.kid].sort());
        expect(await ring.publicKey(first, 1299)).toBeDefined();
        // The exact last expiry is recorded: the old key is gone the moment its last token expired.
        expect(await ring.publicKey(first, 1300)).toBeUndefined();
        expect((await ring.jwks(1300)).keys.map((k) => k.kid)).toEqual([rec.kid]);
        expect(await ring.publicKey("unknown", 1200)).toBeUndefined();
        // Also for a fresh process reading the record, and a keyring opened there.
        await committed(s);
        const reader = await connect();
        expect((await reader.listSigningKeys()).find((k) => k.kid === first)?.maxExp).toBe(1300);
        expect((await Keyring.open(reader, 1200)).activeKid()).toBe(rec.kid);
      });

      it("accepts a new key rotated in by another process as soon as a token names it", async () => {
        const { s, connect } = await fresh();
        const ring = await Keyring.open(s, 1000);
        const before = ring.activeKid();
        await committed(s);
        const other = await connect();
        const rec = await rotateKeys(other, 1001);
        await committed(other);
        expect(rec.kid).not.toBe(before);
        const token = signJwt(
          { sub: "a", exp: 2000 },
          { kid: rec.kid, privateKey: createPrivateKey(rec.privateKey) },
        );
        expect(await ring.verify(token, { now: 1002, leeway: 0 })).toMatchObject({ sub: "a" });
        expect(ring.activeKid()).toBe(rec.kid);
      });

      it("verifies only tokens signed with a published key of its own", async () => {
        const { s } = await fresh();
        const ring = await Keyring.open(s, 1000);
        const token = signJwt({ iss: "me", sub: "a", exp: 1100 }, await ring.signingKey(1000, 1100));
        expect(await ring.verify(token, { now: 1000, issuer: "me", leeway: 0 })).toMatchObject({ sub: "a" });
        await expect(ring.verify(token, { now: 1100, leeway: 0 })).rejects.toMatchObject({
          reason: "expired",
        });
        await expect(ring.verify(token, { now: 1000, issuer: "other", leeway: 0 })).rejects.toMatchObject({
          reason: "issuer",
        });
        const [h, p] = token.split(".");
        const forged = `${h}.${p}.${"A".repeat(86)}`;
        await expect(ring.verify(forged, { now: 1000, leeway: 0 })).rejects.toMatchObject({
          reason: "signature",
        });
        const stranger = await Keyring.open((await fresh()).s, 1000);
        const theirs = signJwt({ sub: "a", exp: 1100 }, await stranger.signingKey(1000, 1100));
        await expect(ring.verify(theirs, { now: 1000, leeway: 0 })).rejects.toMatchObject({
          reason: "unknown_kid",
        });
      });
    });

    describe("revocation feed", () => {
      it("disabling a user and revoking a delegation append events in order; others do not; old ones are purged", async () => {
        const { s, connect } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
        await s.addUser({ email: "bot@x", kind: "agent", owner: "alice@x", createdAt: 1 });
        expect(await s.lastRevocation()).toBe(0);
        expect(await s.setDisabled("bot@x", false, 10)).toBe(true); // enabling revokes nothing
        expect(await s.setDisabled("nobody@x", true, 10)).toBe(false);
        expect(await s.revocationsAfter(0, 10)).toEqual([]);
        const d = delegation("alice@x", "bot@x");
        const c = command("bot@x", 1);
        await s.insertGrant({ grant: d });
        await s.insertGrant({ grant: c });
        expect(await s.setDisabled("bot@x", true, 20)).toBe(true);
        await s.transition(c.id, { from: ["pending"], to: "approved" });
        await s.transition(c.id, { from: ["approved"], to: "revoked", at: 25 }); // a command grant: no event
        expect(await s.transition(d.id, { from: ["approved"], to: "revoked", at: 30 })).toBeDefined();
        expect(await s.transition(d.id, { from: ["approved"], to: "revoked", at: 31 })).toBeUndefined();
        const events = await s.revocationsAfter(0, 10);
        expect(events.map((e) => [e.kind, e.subject, e.at])).toEqual([
          ["user", "bot@x", 20],
          ["delegation", d.id, 30],
        ]);
        expect(events[1]!.seq).toBeGreaterThan(events[0]!.seq);
        expect(await s.revocationsAfter(events[0]!.seq, 10)).toEqual([events[1]]);
        expect(await s.revocationsAfter(0, 1)).toEqual([events[0]]);
        expect(await s.lastRevocation()).toBe(events[1]!.seq);
        // Written by another process (the offline admin command): seen here.
        await committed(s);
        const other = await connect();
        await other.setDisabled("alice@x", true, 40);
        await committed(other);
        expect((await s.revocationsAfter(events[1]!.seq, 10)).map((e) => e.subject)).toEqual(["alice@x"]);
        await s.purgeExpired(30 + 86_400);
        expect((await s.revocationsAfter(0, 10)).map((e) => e.subject)).toEqual(["alice@x"]);
      });
    });

    describe("single-use values", () => {
      it("spent challenge nonces and jtis are single use until they expire", async () => {
        const { s } = await fresh();
        expect(await s.spendChallenge("n1", "a@x", 100)).toBe(true);
        expect(await s.spendChallenge("n1", "a@x", 100)).toBe(false);
        expect(await s.spendChallenge("n1", "b@x", 100)).toBe(false);
        expect(await s.spendChallenge("n2", "a@x", 100)).toBe(true);
        expect(await s.useJti("j", 100)).toBe(true);
        expect(await s.useJti("j", 100)).toBe(false);
        expect(await s.useJti("n1", 100)).toBe(true); // a separate namespace
        await s.purgeExpired(99);
        expect(await s.spendChallenge("n1", "a@x", 100)).toBe(false);
        expect(await s.useJti("j", 200)).toBe(false);
        await s.purgeExpired(100); // expiry at `now` counts as expired
        expect(await s.useJti("j", 200)).toBe(true);
        // Only after its challenge expired can a nonce record go (and the challenge no longer opens then).
        expect(await s.spendChallenge("n1", "a@x", 200)).toBe(true);
      });

      it("of concurrent uses of one nonce or jti exactly one wins", async () => {
        const { s } = await fresh();
        const spends = await Promise.all(Array.from({ length: 20 }, () => s.spendChallenge("n", "a@x", 100)));
        expect(spends.filter(Boolean)).toHaveLength(1);
        const jtis = await Promise.all(Array.from({ length: 20 }, () => s.useJti("j", 100)));
        expect(jtis.filter(Boolean)).toHaveLength(1);
      });

      it("a nonce spent through another process cannot be spent again here", async () => {
        const { s, connect } = await fresh();
        const other = await connect();
        expect(await other.spendChallenge("n", "a@x", 100)).toBe(true);
        expect(await other.useJti("j", 100)).toBe(true);
        await committed(other);
        expect(await s.spendChallenge("n", "a@x", 100)).toBe(false);
        expect(await s.useJti("j", 100)).toBe(false);
      });
    });

    describe("grants", () => {
      it("stores a grant as given and reads it back; versions start at 1, positions grow", async () => {
        const { s } = await fresh();
        const full = command("a@x", 5, {
          status: "approved",
          decided_by: "b@x",
          decided_at: 6,
          expires_at: 70,
          used_at: 8,
        });
        full.request = {
          ...full.request,
          grant_type: "timed",
          duration: 64,
          command: ["sh", "-c", "echo 'x'\n\u00e9"],
          reason: "why",
        };
        const a = await s.insertGrant({ grant: full, matchKey: "k" });
        const b = await s.insertGrant({ grant: command("a@x", 5) });
        expect(a).toMatchObject({ grant: full, version: 1 });
        expect(b.seq).toBeGreaterThan(a.seq);
        const read = await s.getGrant(full.id);
        expect(read).toEqual({ grant: full, version: 1, seq: a.seq });
        expect(await s.getGrant(id())).toBeUndefined();
        await expect(s.insertGrant({ grant: { ...command("a@x", 6), id: full.id } })).rejects.toThrow();
      });

      it("transitions are compare-and-set on the status and bump the version", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("a", 1) });
        const approved = await s.transition(grant.id, {
          from: ["pending"],
          to: "approved",
          decidedBy: "x",
          decidedAt: 2,
        });
        expect(approved?.grant).toMatchObject({ status: "approved", decided_by: "x", decided_at: 2 });
        expect(approved?.version).toBe(2);
        expect(await s.transition(grant.id, { from: ["pending"], to: "denied" })).toBeUndefined();
        expect((await s.getGrant(grant.id))?.version).toBe(2);
        const used = await s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 3 });
        expect(used?.grant.used_at).toBe(3);
        expect(used?.version).toBe(3);
        expect(await s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 4 })).toBeUndefined();
        expect(await s.transition(id(), { from: ["pending"], to: "denied" })).toBeUndefined();
        const revoked = await s.transition(grant.id, { from: ["approved", "used"], to: "revoked" });
        expect(revoked?.grant).toMatchObject({ status: "revoked", used_at: 3, decided_by: "x" });
        expect(await s.getGrant(grant.id)).toEqual(revoked);
      });

      it("a transition given the grant as seen applies to that version only and answers what a read of the row gives", async () => {
        const { s, connect } = await fresh();
        const other = await connect();
        const acted = command("a@x", 1);
        const timed = command("a@x", 2);
        timed.request = { ...timed.request, grant_type: "timed", duration: 30 };
        const d = delegation("a@x", "bot@x", 3);
        await s.insertGrant({ grant: acted, actingParty: "bot@x" });
        await s.insertGrant({ grant: timed });
        await s.insertGrant({ grant: d });
        // Every field a transition sets, clears or keeps, and the request's rewrites.
        const steps: [string, Transition][] = [
          [
            acted.id,
            {
              from: ["pending"],
              to: "approved",
              decidedBy: "b@x",
              decidedAt: 4,
              approvalProof: "ed25519",
              actingParty: "bot@x",
              grantType: "timed",
              duration: 60,
              expiresAt: 64,
            },
          ],
          [acted.id, { from: ["approved"], to: "used", usedAt: 5 }],
          [acted.id, { from: ["used"], to: "revoked", at: 6, actingParty: null }],
          [
            timed.id,
            {
              from: ["pending"],
              to: "approved",
              decidedBy: "b@x",
              decidedAt: 7,
              grantType: "always",
              duration: null,
              expiresAt: null,
              actingParty: null,
            },
          ],
          [d.id, { from: ["approved"], to: "revoked", at: 8 }],
        ];
        for (const [grantId, t] of steps) {
          const seen = await s.getGrant(grantId);
          const answer = await s.transition(grantId, { ...t, seen });
          expect(answer?.version).toBe(seen!.version + 1);
          await committed(s);
          await caughtUp(other);
          // The same fields in the same order as another handle reads them from the row.
          expect(JSON.stringify(answer)).toBe(JSON.stringify(await other.getGrant(grantId)));
        }
        expect((await s.revocationsAfter(0, 10)).map((e) => e.subject)).toEqual([d.id]);
        // A version no longer current is refused, even where the status fits.
        const { grant } = await s.insertGrant({ grant: command("a@x", 9) });
        const first = await s.getGrant(grant.id);
        expect(
          await s.transition(grant.id, { from: ["pending"], to: "approved", seen: first }),
        ).toBeDefined();
        expect(
          await s.transition(grant.id, {
            from: ["pending", "approved"],
            to: "used",
            usedAt: 10,
            seen: first,
          }),
        ).toBeUndefined();
        expect((await s.getGrant(grant.id))?.grant.status).toBe("approved");
        await expect(
          s.transition(acted.id, { from: ["revoked"], to: "revoked", seen: first }),
        ).rejects.toThrow(/as seen/);
      });

      it("an approval records its proof type; later transitions keep it, a denial has none", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("a", 1) });
        expect(grant.approval_proof).toBeUndefined();
        const approved = await s.transition(grant.id, {
          from: ["pending"],
          to: "approved",
          decidedBy: "x",
          decidedAt: 2,
          approvalProof: "ed25519",
        });
        expect(approved?.grant.approval_proof).toBe("ed25519");
        const used = await s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 3 });
        expect(used?.grant.approval_proof).toBe("ed25519");
        expect((await s.getGrant(grant.id))?.grant.approval_proof).toBe("ed25519");
        const other = await s.insertGrant({ grant: command("a", 4) });
        const denied = await s.transition(other.grant.id, {
          from: ["pending"],
          to: "denied",
          decidedBy: "x",
        });
        expect(denied?.grant.approval_proof).toBeUndefined();
      });

      it("of N concurrent consumes of a once grant exactly one succeeds", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("a", 1, { status: "approved" }) });
        const results = await Promise.all(
          Array.from({ length: 25 }, (_, i) =>
            s.transition(grant.id, { from: ["approved"], to: "used", usedAt: 10 + i }),
          ),
        );
        const winners = results.filter((r) => r !== undefined);
        expect(winners).toHaveLength(1);
        expect(await s.getGrant(grant.id)).toEqual(winners[0]);
        expect(winners[0]?.version).toBe(2);
      });

      it("of concurrent decisions on one pending grant exactly one wins", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("a", 1) });
        const results = await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            s.transition(grant.id, {
              from: ["pending"],
              to: i % 2 ? "approved" : "denied",
              decidedBy: `d${i}`,
            }),
          ),
        );
        const winners = results.filter((r) => r !== undefined);
        expect(winners).toHaveLength(1);
        expect((await s.getGrant(grant.id))?.grant.decided_by).toBe(winners[0]?.grant.decided_by);
      });

      it("rewrites grant_type and duration together on an override, and can drop the duration", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("a", 1) });
        const t = await s.transition(grant.id, {
          from: ["pending"],
          to: "approved",
          grantType: "timed",
          duration: 60,
          expiresAt: 61,
        });
        expect(t?.grant.request).toMatchObject({ grant_type: "timed", duration: 60, command: ["ls"] });
        expect(t?.grant.expires_at).toBe(61);
        const timed = command("a", 1);
        timed.request = { ...timed.request, grant_type: "timed", duration: 30 };
        await s.insertGrant({ grant: timed });
        const always = await s.transition(timed.id, {
          from: ["pending"],
          to: "approved",
          grantType: "always",
          duration: null,
          expiresAt: null,
        });
        expect(always?.grant.request.grant_type).toBe("always");
        expect(always?.grant.request).not.toHaveProperty("duration");
        expect(always?.grant).not.toHaveProperty("expires_at");
        expect(await s.getGrant(timed.id)).toEqual(always);
      });

      it("paginates newest first across equal timestamps without skipping or repeating", async () => {
        const { s } = await fresh();
        const ids: string[] = [];
        for (let i = 0; i < 37; i++)
          ids.push(
            (await s.insertGrant({ grant: command(i % 2 ? "a" : "b", 1000 + Math.floor(i / 10)) })).grant.id,
          );
        for (const requesters of [undefined, ["a", "b"]]) {
          const expected = [...ids].reverse();
          const seen: string[] = [];
          let before: { createdAt: number; seq: number } | undefined;
          for (let page = 0; page < 20; page++) {
            const r = await s.queryGrants({
              ...(requesters ? { requesters } : {}),
              limit: 4,
              ...(before ? { before } : {}),
            });
            seen.push(...r.items.map((i) => i.grant.id));
            if (!r.hasMore) break;
            const last = r.items.at(-1)!;
            before = { createdAt: last.grant.created_at, seq: last.seq };
            // Grants created while a client pages do not shift the pages it has still to read.
            if (page === 2) ids.push((await s.insertGrant({ grant: command("a", 1000) })).grant.id);
          }
          expect(seen).toEqual(expected);
        }
        expect((await s.queryGrants({ requesters: ["a"], status: "pending", limit: 100 })).items.length).toBe(
          20,
        );
        expect(await s.queryGrants({ requesters: [], limit: 100 })).toEqual({ items: [], hasMore: false });
        const exact = await s.queryGrants({ requesters: ["b"], limit: 19 });
        expect([exact.items.length, exact.hasMore]).toEqual([19, false]);
        const more = await s.queryGrants({ requesters: ["b"], limit: 18 });
        expect([more.items.length, more.hasMore]).toEqual([18, true]);
      });

      it("pages an admin's status and type listings over many requesters exactly as the grants say", async () => {
        const { s } = await fresh();
        // Requesters whose newest grants of a status interleave, some with none of it; a pseudo-random
        // but fixed mix, so a failure reproduces.
        const statuses: Grant["status"][] = ["pending", "approved", "denied", "revoked", "expired", "used"];
        const all: { id: string; status: Grant["status"]; type: Grant["type"] }[] = [];
        let x = 7;
        const next = (n: number) => {
          x = (x * 1103515245 + 12345) % 2147483648;
          return x % n;
        };
        for (let i = 0; i < 150; i++) {
          const requester = `r${next(9)}@x`;
          const status = i % 50 === 0 ? "revoked" : statuses[next(requester === "r0@x" ? 2 : 6)]!;
          const grant =
            next(10) === 0
              ? delegation(requester, "bot@x", 100 + i, { status })
              : command(requester, 100 + i, { status });
          await s.insertGrant({ grant });
          all.push({ id: grant.id, status, type: grant.type });
        }
        const newestFirst = [...all].reverse();
        for (const status of [...statuses, undefined])
          for (const type of ["command", "delegation", undefined] as const)
            for (const limit of [1, 4, 25]) {
              const expected = newestFirst
                .filter((g) => (!status || g.status === status) && (!type || g.type === type))
                .map((g) => g.id);
              const seen: string[] = [];
              let before: { createdAt: number; seq: number } | undefined;
              for (let page = 0; page < 200; page++) {
                const r = await s.queryGrants({
                  ...(status ? { status } : {}),
                  ...(type ? { type } : {}),
                  limit,
                  ...(before ? { before } : {}),
                });
                seen.push(...r.items.map((i) => i.grant.id));
                expect(r.items.length, `${status} ${type} ${limit}`).toBe(
                  Math.min(limit, expected.length - seen.length + r.items.length),
                );
                if (!r.hasMore) break;
                const last = r.items.at(-1)!;
                before = { createdAt: last.grant.created_at, seq: last.seq };
              }
              expect(seen, `${status} ${type} ${limit}`).toEqual(expected);
            }
      });

      it("filters listings by status, type and party", async () => {
        const { s } = await fresh();
        const cmd = await s.insertGrant({ grant: command("alice@x", 1, { status: "approved" }) });
        const d1 = await s.insertGrant({ grant: delegation("alice@x", "bot@x", 2) });
        const d2 = await s.insertGrant({ grant: delegation("bob@x", "alice@x", 3) });
        const d3 = await s.insertGrant({ grant: delegation("bob@x", "bot@x", 4, { status: "revoked" }) });
        const ids = async (q: Parameters<Store["queryGrants"]>[0]) =>
          (await s.queryGrants(q)).items.map((i) => i.grant.id);
        expect(await ids({ limit: 10 })).toEqual([d3, d2, d1, cmd].map((x) => x.grant.id));
        expect(await ids({ type: "command", limit: 10 })).toEqual([cmd.grant.id]);
        expect(await ids({ type: "delegation", status: "approved", limit: 10 })).toEqual(
          [d2, d1].map((x) => x.grant.id),
        );
        expect(await ids({ status: "revoked", limit: 10 })).toEqual([d3.grant.id]);
        expect(await ids({ requesters: ["alice@x"], limit: 10 })).toEqual([d1, cmd].map((x) => x.grant.id));
        expect(await ids({ delegator: "bob@x", limit: 10 })).toEqual([d3, d2].map((x) => x.grant.id));
        expect(await ids({ delegate: "bot@x", limit: 10 })).toEqual([d3, d1].map((x) => x.grant.id));
        expect(await ids({ party: "alice@x", limit: 10 })).toEqual([d2, d1].map((x) => x.grant.id));
        expect(await ids({ party: "bot@x", status: "approved", limit: 10 })).toEqual([d1.grant.id]);
        const first = await s.queryGrants({ party: "alice@x", limit: 1 });
        expect(first.hasMore).toBe(true);
        const last = first.items[0]!;
        expect(
          await ids({
            party: "alice@x",
            limit: 1,
            before: { createdAt: last.grant.created_at, seq: last.seq },
          }),
        ).toEqual([d1.grant.id]);
      });

      it("lists the grants one identity decided, newest first, in pages (the history page)", async () => {
        const { s } = await fresh();
        const a = await s.insertGrant({ grant: command("bot@x", 1) });
        const b = await s.insertGrant({ grant: command("bot@x", 2) });
        const c = await s.insertGrant({ grant: command("bot@x", 3) });
        await s.insertGrant({ grant: command("bot@x", 4) });
        await s.transition(a.grant.id, {
          from: ["pending"],
          to: "approved",
          decidedBy: "alice@x",
          decidedAt: 5,
        });
        await s.transition(b.grant.id, { from: ["pending"], to: "denied", decidedBy: "bob@x", decidedAt: 6 });
        await s.transition(c.grant.id, {
          from: ["pending"],
          to: "denied",
          decidedBy: "alice@x",
          decidedAt: 7,
        });
        const ids = async (q: Parameters<Store["queryGrants"]>[0]) =>
          (await s.queryGrants(q)).items.map((i) => i.grant.id);
        expect(await ids({ decidedBy: "alice@x", limit: 10 })).toEqual([c.grant.id, a.grant.id]);
        expect(await ids({ decidedBy: "bob@x", limit: 10 })).toEqual([b.grant.id]);
        expect(await ids({ decidedBy: "nobody@x", limit: 10 })).toEqual([]);
        const first = await s.queryGrants({ decidedBy: "alice@x", limit: 1 });
        expect(first.hasMore).toBe(true);
        const last = first.items[0]!;
        expect(
          await ids({
            decidedBy: "alice@x",
            limit: 1,
            before: { createdAt: last.grant.created_at, seq: last.seq },
          }),
        ).toEqual([a.grant.id]);
      });

      it("finds reusable approved timed/always grants by requester and match key while unexpired", async () => {
        const { s } = await fresh();
        const always = command("a", 1, { status: "approved" });
        always.request.grant_type = "always";
        await s.insertGrant({ grant: always, matchKey: "k" });
        const once = command("a", 2, { status: "approved" });
        await s.insertGrant({ grant: once, matchKey: "k2" });
        const timed = command("a", 3, { status: "approved", expires_at: 100 });
        timed.request.grant_type = "timed";
        await s.insertGrant({ grant: timed, matchKey: "k3" });
        const pending = command("a", 4);
        pending.request.grant_type = "always";
        await s.insertGrant({ grant: pending, matchKey: "k4" });
        expect((await s.findReusable("a", "k", 50))?.grant.id).toBe(always.id);
        expect(await s.findReusable("b", "k", 50)).toBeUndefined();
        expect(await s.findReusable("a", "k2", 50)).toBeUndefined();
        expect(await s.findReusable("a", "k4", 50)).toBeUndefined();
        expect(await s.findReusable("a", "nothing", 50)).toBeUndefined();
        expect((await s.findReusable("a", "k3", 99))?.grant.id).toBe(timed.id);
        expect(await s.findReusable("a", "k3", 100)).toBeUndefined();
        // The newest match wins; a revoked one is never reused.
        const newer = command("a", 5, { status: "approved" });
        newer.request.grant_type = "always";
        await s.insertGrant({ grant: newer, matchKey: "k" });
        expect((await s.findReusable("a", "k", 50))?.grant.id).toBe(newer.id);
        await s.transition(newer.id, { from: ["approved"], to: "revoked" });
        expect((await s.findReusable("a", "k", 50))?.grant.id).toBe(always.id);
        await s.transition(always.id, { from: ["approved"], to: "revoked" });
        expect(await s.findReusable("a", "k", 50)).toBeUndefined();
        // An approval makes a pending grant reusable.
        await s.transition(pending.id, { from: ["pending"], to: "approved" });
        expect((await s.findReusable("a", "k4", 50))?.grant.id).toBe(pending.id);
      });

      it("the expiry sweep expires approved grants past expires_at, once, and nothing else", async () => {
        const { s } = await fresh();
        const due = await s.insertGrant({ grant: command("a", 1, { status: "approved", expires_at: 100 }) });
        const later = await s.insertGrant({
          grant: command("a", 1, { status: "approved", expires_at: 101 }),
        });
        const used = await s.insertGrant({ grant: command("a", 1, { status: "used", expires_at: 50 }) });
        const forever = await s.insertGrant({ grant: command("a", 1, { status: "approved" }) });
        const d = await s.insertGrant({ grant: delegation("a", "b", 1, { expires_at: 90 }) });
        expect((await s.expireDue(100)).sort()).toEqual([due.grant.id, d.grant.id].sort());
        expect(await s.expireDue(100)).toEqual([]);
        expect(await s.getGrant(due.grant.id)).toMatchObject({ grant: { status: "expired" }, version: 2 });
        expect((await s.getGrant(d.grant.id))?.grant.status).toBe("expired");
        expect((await s.getGrant(later.grant.id))?.grant.status).toBe("approved");
        expect((await s.getGrant(used.grant.id))?.grant.status).toBe("used");
        expect((await s.getGrant(forever.grant.id))?.grant.status).toBe("approved");
        expect(await s.expireDue(101)).toEqual([later.grant.id]);
      });

      it("records who acted on creation and on a decision, and clears it for the principal's own", async () => {
        const { s } = await fresh();
        const stored = await s.insertGrant({ grant: command("alice@x", 1), actingParty: "bot@x" });
        expect(stored.createdAct).toBe("bot@x");
        expect(await s.getGrant(stored.grant.id)).toMatchObject({ createdAct: "bot@x" });
        const revoked = await s.transition(stored.grant.id, {
          from: ["pending"],
          to: "revoked",
          actingParty: "bot@x",
        });
        expect(revoked).toMatchObject({ createdAct: "bot@x", decidedAct: "bot@x" });
        expect((await s.queryGrants({ limit: 1 })).items[0]).toMatchObject({
          createdAct: "bot@x",
          decidedAct: "bot@x",
        });
        const own = await s.insertGrant({ grant: command("alice@x", 2) });
        expect(own).not.toHaveProperty("createdAct");
        expect(await s.getGrant(own.grant.id)).not.toHaveProperty("createdAct");
        await s.transition(own.grant.id, {
          from: ["pending"],
          to: "approved",
          decidedBy: "alice@x",
          actingParty: "bot@x",
        });
        const cleared = await s.transition(own.grant.id, {
          from: ["approved"],
          to: "revoked",
          actingParty: null,
        });
        expect(cleared).not.toHaveProperty("decidedAct");
        expect(await s.getGrant(own.grant.id)).not.toHaveProperty("decidedAct");
      });
    });

    describe("delegation lookups", () => {
      it("a revocation or expiry is seen at the next lookup, by this handle and another", async () => {
        const { s, connect } = await fresh();
        const d = await s.insertGrant({ grant: delegation("alice@x", "bot@x") });
        const timed = await s.insertGrant({ grant: delegation("alice@x", "bot@x", 1, { expires_at: 10 }) });
        const other = await s.insertGrant({ grant: delegation("alice@x", "bot@x") });
        for (const x of [d, timed, other])
          expect((await s.getGrant(x.grant.id))?.grant.status).toBe("approved");
        await s.transition(d.grant.id, { from: ["approved"], to: "revoked" });
        expect((await s.getGrant(d.grant.id))?.grant.status).toBe("revoked");
        expect(await s.expireDue(10)).toEqual([timed.grant.id]);
        expect((await s.getGrant(timed.grant.id))?.grant.status).toBe("expired");
        // Revoked in another process (the admin's CLI against the same data).
        await committed(s);
        const elsewhere = await connect();
        expect(
          await elsewhere.transition(other.grant.id, { from: ["approved"], to: "revoked" }),
        ).toBeDefined();
        await committed(elsewhere);
        expect((await s.getGrant(other.grant.id))?.grant.status).toBe("revoked");
      });

      it("a lookup under way while the delegation is revoked does not outlive the revocation", async () => {
        const { s } = await fresh();
        const d = await s.insertGrant({ grant: delegation("alice@x", "bot@x") });
        const during = s.getGrant(d.grant.id);
        const revoked = s.transition(d.grant.id, { from: ["approved"], to: "revoked" });
        await Promise.all([during, revoked]);
        expect((await s.getGrant(d.grant.id))?.grant.status).toBe("revoked");
      });

      it("what a lookup returns cannot change what the next one sees", async () => {
        const { s } = await fresh();
        const d = await s.insertGrant({ grant: delegation("alice@x", "bot@x") });
        const first = await s.getGrant(d.grant.id);
        try {
          (first!.grant as { status: string }).status = "approved-by-mistake";
          first!.grant.request.delegate = "eve@x";
        } catch {
          // a frozen value refuses the change: that is fine too
        }
        expect((await s.getGrant(d.grant.id))?.grant).toMatchObject({
          status: "approved",
          request: { delegate: "bot@x" },
        });
      });
    });

    describe("OAuth: clients, codes, refresh tokens, device codes", () => {
      const code = (hash: string, extra: Partial<AuthCodeRecord> = {}): AuthCodeRecord => ({
        codeHash: hash,
        clientId: "apes-cli",
        redirectUri: "http://127.0.0.1:5000/cb",
        codeChallenge: "c".repeat(43),
        nonce: "n",
        sub: "alice@x",
        familyId: `fam-${hash}`,
        createdAt: 100,
        expiresAt: 160,
        ...extra,
      });
      const refresh = (hash: string, familyId: string, extra: Partial<RefreshTokenRecord> = {}) => ({
        tokenHash: hash,
        familyId,
        clientId: "apes-cli",
        sub: "alice@x",
        act: "human" as const,
        createdAt: 100,
        expiresAt: 1000,
        ...extra,
      });
      const device = (
        hash: string,
        userCode: string,
        extra: Partial<DeviceCodeRecord> = {},
      ): DeviceCodeRecord => ({
        deviceHash: hash,
        userCode,
        clientId: "apes-cli",
        status: "pending",
        interval: 5,
        createdAt: 100,
        expiresAt: 700,
        ...extra,
      });

      it("registers, lists (by id) and removes clients; a duplicate id is refused", async () => {
        const { s } = await fresh();
        await s.addClient({ id: "sp-b", redirectUris: ["https://b/cb"], createdAt: 1 });
        await s.addClient({ id: "sp-a", redirectUris: ["https://a/cb", "https://a/cb2"], createdAt: 2 });
        await expect(s.addClient({ id: "sp-a", redirectUris: [], createdAt: 3 })).rejects.toThrow();
        expect(await s.getClient("sp-a")).toEqual({
          id: "sp-a",
          redirectUris: ["https://a/cb", "https://a/cb2"],
          createdAt: 2,
        });
        expect((await s.listClients()).map((c) => c.id)).toEqual(["sp-a", "sp-b"]);
        expect(await s.removeClient("sp-a")).toBe(true);
        expect(await s.removeClient("sp-a")).toBe(false);
        expect(await s.getClient("sp-a")).toBeUndefined();
      });

      it("an authorization code is spent once (of concurrent spends exactly one wins), never after expiry", async () => {
        const { s } = await fresh();
        await s.insertAuthCode(code("h1"));
        await s.insertAuthCode(code("h2"));
        const spends = await Promise.all(Array.from({ length: 20 }, () => s.spendAuthCode("h1", 120)));
        const won = spends.filter((x) => x !== undefined);
        expect(won).toHaveLength(1);
        expect(won[0]).toMatchObject({ codeHash: "h1", sub: "alice@x", familyId: "fam-h1", usedAt: 120 });
        expect(await s.getAuthCode("h1")).toMatchObject({ usedAt: 120 });
        expect(await s.spendAuthCode("h2", 160)).toBeUndefined(); // expiry at `now` counts as expired
        expect(await s.getAuthCode("h2")).not.toHaveProperty("usedAt");
        expect(await s.spendAuthCode("nope", 120)).toBeUndefined();
        await s.purgeExpired(160);
        expect(await s.getAuthCode("h1")).toBeUndefined();
      });

      it("a refresh token is spent once; a revoked family kills its unspent tokens and those stored later", async () => {
        const { s } = await fresh();
        await s.insertRefreshToken(
          refresh("r1", "f1", { actingParty: "bot@x", delegationGrant: "g", act: "agent" }),
        );
        const spends = await Promise.all(Array.from({ length: 20 }, () => s.spendRefreshToken("r1", 200)));
        expect(spends.filter((x) => x !== undefined)).toHaveLength(1);
        expect(spends.find((x) => x)).toMatchObject({
          act: "agent",
          actingParty: "bot@x",
          delegationGrant: "g",
        });
        await s.insertRefreshToken(refresh("r2", "f1"));
        expect(await s.getRefreshToken("r1")).toMatchObject({ usedAt: 200, familyRevoked: false });
        expect(await s.revokeRefreshFamily("f1", 300)).toBe(true);
        expect(await s.revokeRefreshFamily("f1", 301)).toBe(false);
        expect(await s.spendRefreshToken("r2", 302)).toBeUndefined();
        expect(await s.getRefreshToken("r2")).toMatchObject({ familyRevoked: true });
        await s.insertRefreshToken(refresh("r3", "f1"));
        expect(await s.spendRefreshToken("r3", 303)).toBeUndefined();
        // Another family is untouched; an expired token is not spent.
        await s.insertRefreshToken(refresh("o1", "f2", { expiresAt: 400 }));
        expect(await s.spendRefreshToken("o1", 400)).toBeUndefined();
        await s.insertRefreshToken(refresh("o2", "f2"));
        expect(await s.spendRefreshToken("o2", 400)).toMatchObject({ tokenHash: "o2" });
      });

      it("a family revoked before its first token exists stays revoked when the token arrives", async () => {
        const { s } = await fresh();
        expect(await s.revokeRefreshFamily("early", 100)).toBe(true);
        await s.insertRefreshToken(refresh("e1", "early"));
        expect(await s.spendRefreshToken("e1", 101)).toBeUndefined();
        // Purged only with its last token: until then it stays revoked.
        await s.purgeExpired(999);
        expect(await s.getRefreshToken("e1")).toMatchObject({ familyRevoked: true });
        await s.purgeExpired(1000);
        expect(await s.getRefreshToken("e1")).toBeUndefined();
      });

      it("a family lives as long as its longest-lived token", async () => {
        const { s } = await fresh();
        await s.insertRefreshToken(refresh("a", "f", { expiresAt: 500 }));
        await s.insertRefreshToken(refresh("b", "f", { expiresAt: 2000 }));
        await s.revokeRefreshFamily("f", 100);
        await s.purgeExpired(500);
        expect(await s.getRefreshToken("a")).toBeUndefined();
        expect(await s.getRefreshToken("b")).toMatchObject({ familyRevoked: true });
        expect(await s.spendRefreshToken("b", 600)).toBeUndefined();
        await s.purgeExpired(2000);
        expect(await s.getRefreshToken("b")).toBeUndefined();
      });

      it("a spend or revocation in another process counts here", async () => {
        const { s, connect } = await fresh();
        await s.insertAuthCode(code("h"));
        await s.insertRefreshToken(refresh("r", "f"));
        await s.insertRefreshToken(refresh("q", "g"));
        await committed(s);
        const other = await connect();
        expect(await other.spendAuthCode("h", 120)).toBeDefined();
        expect(await other.spendRefreshToken("r", 120)).toBeDefined();
        expect(await other.revokeRefreshFamily("g", 120)).toBe(true);
        await committed(other);
        expect(await s.spendAuthCode("h", 121)).toBeUndefined();
        expect(await s.spendRefreshToken("r", 121)).toBeUndefined();
        expect(await s.spendRefreshToken("q", 121)).toBeUndefined();
      });

      it("device codes: unique user codes, one decision while pending, spent once when approved", async () => {
        const { s } = await fresh();
        await s.insertDeviceCode(device("d1", "BCDFGHJK"));
        await expect(s.insertDeviceCode(device("d2", "BCDFGHJK"))).rejects.toThrow();
        await expect(s.insertDeviceCode(device("d1", "ZZZZZZZZ"))).rejects.toThrow();
        expect(await s.getDeviceCodeByUserCode("BCDFGHJK", 699)).toMatchObject({ deviceHash: "d1" });
        expect(await s.getDeviceCodeByUserCode("BCDFGHJK", 700)).toBeUndefined();
        expect(await s.spendDeviceCode("d1", 200)).toBeUndefined(); // pending
        await s.recordDevicePoll("d1", 150, 10);
        expect(await s.getDeviceCode("d1")).toMatchObject({ lastPollAt: 150, interval: 10 });
        const decisions = await Promise.all([
          s.decideDeviceCode("BCDFGHJK", "approved", "alice@x", 200),
          s.decideDeviceCode("BCDFGHJK", "denied", "bob@x", 200),
        ]);
        expect(decisions.filter(Boolean)).toHaveLength(1);
        expect(await s.getDeviceCode("d1")).toMatchObject({
          status: "approved",
          sub: "alice@x",
          decidedAt: 200,
        });
        const spends = await Promise.all(Array.from({ length: 10 }, () => s.spendDeviceCode("d1", 210)));
        expect(spends.filter((x) => x !== undefined)).toHaveLength(1);
        expect(await s.getDeviceCode("d1")).toMatchObject({ status: "used" });
        // Expired: no decision, no spend.
        await s.insertDeviceCode(device("d3", "CCCCCCCC", { expiresAt: 300 }));
        expect(await s.decideDeviceCode("CCCCCCCC", "approved", "alice@x", 300)).toBe(false);
        await s.purgeExpired(700);
        expect(await s.getDeviceCode("d1")).toBeUndefined();
      });
    });

    describe("notifications", () => {
      const sub = (
        id: string,
        owner: string,
        extra: Partial<SubscriptionRecord> = {},
      ): SubscriptionRecord => ({
        id,
        owner,
        channel: "webhook",
        target: "https://hooks.example/x",
        secret: "s3cret",
        events: ["pending", "decided"],
        createdAt: 1,
        ...extra,
      });
      const row = (
        key: string,
        subscriptionId: string,
        extra: Partial<NewNotification> = {},
      ): NewNotification => ({
        key,
        subscriptionId,
        event: "pending",
        payload: '{"x":1}',
        createdAt: 10,
        ...extra,
      });

      it("keeps subscriptions per owner, removes only the owner's", async () => {
        const { s } = await fresh();
        await s.addSubscription(sub("s1", "alice@x"));
        await s.addSubscription(sub("s2", "alice@x", { channel: "email", target: "alice@x", createdAt: 2 }));
        await s.addSubscription(sub("s3", "bob@x", { secret: undefined, events: ["decided"] }));
        await expect(s.addSubscription(sub("s1", "bob@x"))).rejects.toThrow();
        expect((await s.subscriptionsOf(["alice@x"])).map((x) => x.id)).toEqual(["s1", "s2"]);
        expect((await s.subscriptionsOf(["alice@x", "bob@x", "alice@x"])).map((x) => x.id)).toEqual([
          "s1",
          "s2",
          "s3",
        ]);
        expect(await s.getSubscription("s3")).toEqual({
          id: "s3",
          owner: "bob@x",
          channel: "webhook",
          target: "https://hooks.example/x",
          events: ["decided"],
          createdAt: 1,
        });
        expect(await s.removeSubscription("s1", "bob@x")).toBe(false);
        expect(await s.removeSubscription("s1", "alice@x")).toBe(true);
        expect(await s.removeSubscription("s1", "alice@x")).toBe(false);
        expect(await s.removeSubscription("s3")).toBe(true);
        expect((await s.subscriptionsOf(["alice@x", "bob@x"])).map((x) => x.id)).toEqual(["s2"]);
      });

      it("writes a grant's outbox rows with the grant, at most once per key", async () => {
        const { s } = await fresh();
        const g = command("bot@x", 10);
        await s.insertGrant({ grant: g, outbox: [row(`${g.id}.pending.s1`, "s1", { grantId: g.id })] });
        expect(await s.enqueueNotifications([row(`${g.id}.pending.s1`, "s1")])).toBe(0);
        const due = await s.dueNotifications(10_000, 10);
        expect(due).toEqual([
          {
            id: due[0]!.id,
            key: `${g.id}.pending.s1`,
            subscriptionId: "s1",
            grantId: g.id,
            event: "pending",
            payload: '{"x":1}',
            status: "pending",
            attempts: 0,
            dueAtMs: 10_000,
            createdAt: 10,
          },
        ]);
        expect(await s.dueNotifications(9_999, 10)).toEqual([]);
        expect(await s.dueNotifications(10_000, 10, ["s1"])).toEqual([]);
        expect(await s.dueNotifications(10_000, 10, ["s2", "s3"])).toHaveLength(1);
        expect(await s.nextNotificationDue()).toBe(10_000);
      });

      it("writes a transition's outbox rows only when the transition applies", async () => {
        const { s } = await fresh();
        const { grant } = await s.insertGrant({ grant: command("bot@x", 10) });
        const outbox = [row(`${grant.id}.decided.s1`, "s1", { event: "decided", grantId: grant.id })];
        expect(await s.transition(grant.id, { from: ["approved"], to: "used", outbox })).toBeUndefined();
        expect(await s.dueNotifications(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);
        expect(await s.transition(grant.id, { from: ["pending"], to: "denied", outbox })).toBeDefined();
        expect((await s.dueNotifications(Number.MAX_SAFE_INTEGER, 10)).map((r) => r.event)).toEqual([
          "decided",
        ]);
      });

      it("a failed grant insert writes no outbox row", async () => {
        const { s } = await fresh();
        const g = command("bot@x", 10);
        await s.insertGrant({ grant: g });
        await expect(s.insertGrant({ grant: g, outbox: [row("k-dup", "s1")] })).rejects.toThrow();
        expect(await s.dueNotifications(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);
      });

      it("records attempts: retry later, delivered, dead; a dead row can be retried", async () => {
        const { s } = await fresh();
        await s.enqueueNotifications([row("a", "s1"), row("b", "s1", { createdAt: 11 })]);
        const [a, b] = await s.dueNotifications(20_000, 10);
        expect(await s.recordAttempt(a!.id, { delivered: false, error: "HTTP 500", retryAtMs: 50_000 })).toBe(
          true,
        );
        expect((await s.dueNotifications(20_000, 10)).map((r) => r.key)).toEqual(["b"]);
        expect(await s.nextNotificationDue()).toBe(11_000);
        expect(await s.recordAttempt(b!.id, { delivered: false, error: "gone", dead: true })).toBe(true);
        expect(await s.recordAttempt(b!.id, { delivered: true, at: 12 })).toBe(false);
        const [again] = await s.dueNotifications(50_000, 10);
        expect(again).toMatchObject({ key: "a", attempts: 1, lastError: "HTTP 500", dueAtMs: 50_000 });
        expect(await s.recordAttempt(a!.id, { delivered: true, at: 51 })).toBe(true);
        expect(await s.nextNotificationDue()).toBeUndefined();
        expect((await s.listNotifications({ status: "dead", limit: 10 })).map((r) => r.key)).toEqual(["b"]);
        expect(await s.listNotifications({ limit: 10 })).toMatchObject([
          { key: "b", status: "dead", attempts: 1, lastError: "gone" },
          { key: "a", status: "delivered", attempts: 2, deliveredAt: 51 },
        ]);
        expect(await s.retryNotification(a!.id, 60_000)).toBe(false);
        expect(await s.retryNotification(b!.id, 60_000)).toBe(true);
        expect(await s.dueNotifications(60_000, 10)).toMatchObject([
          { key: "b", status: "pending", attempts: 0 },
        ]);
      });

      it("lists one owner's rows; removing a subscription drops its undelivered rows", async () => {
        const { s } = await fresh();
        await s.addSubscription(sub("s1", "alice@x"));
        await s.addSubscription(sub("s2", "bob@x"));
        await s.enqueueNotifications([row("a", "s1"), row("b", "s2"), row("c", "s1")]);
        const [first] = await s.dueNotifications(20_000, 1);
        await s.recordAttempt(first!.id, { delivered: true, at: 20 });
        expect((await s.listNotifications({ owner: "alice@x", limit: 10 })).map((r) => r.key)).toEqual([
          "c",
          "a",
        ]);
        expect(await s.removeSubscription("s1", "alice@x")).toBe(true);
        expect((await s.listNotifications({ limit: 10 })).map((r) => r.key)).toEqual(["b", "a"]);
      });

      it("purges delivered and dead rows older than the cutoff, never pending ones", async () => {
        const { s } = await fresh();
        await s.enqueueNotifications([
          row("old-ok", "s1", { createdAt: 5 }),
          row("old-dead", "s1", { createdAt: 6 }),
          row("old-pending", "s1", { createdAt: 7 }),
          row("new-ok", "s1", { createdAt: 50 }),
        ]);
        const rows = await s.dueNotifications(Number.MAX_SAFE_INTEGER, 10);
        const id = (k: string) => rows.find((r) => r.key === k)!.id;
        await s.recordAttempt(id("old-ok"), { delivered: true, at: 8 });
        await s.recordAttempt(id("old-dead"), { delivered: false, error: "x", dead: true });
        await s.recordAttempt(id("new-ok"), { delivered: true, at: 51 });
        expect(await s.purgeNotifications(10)).toBe(2);
        expect((await s.listNotifications({ limit: 10 })).map((r) => r.key).sort()).toEqual([
          "new-ok",
          "old-pending",
        ]);
      });

      it("another process sees the outbox once flushed (an admin retry reaches the server)", async () => {
        const { s, connect } = await fresh();
        const other = await connect();
        await s.enqueueNotifications([row("a", "s1")]);
        await committed(s);
        const [r] = await other.dueNotifications(20_000, 10);
        expect(r?.key).toBe("a");
        await other.recordAttempt(r!.id, { delivered: false, error: "x", dead: true });
        expect(await other.retryNotification(r!.id, 30_000)).toBe(true);
        expect((await s.dueNotifications(30_000, 10)).map((x) => x.key)).toEqual(["a"]);
      });
    });

    describe("durability", () => {
      it("every write is there for the next process once the store is closed", async () => {
        const { s, connect } = await fresh();
        await s.addUser({ email: "alice@x", kind: "human", createdAt: 1 });
        const { grant } = await s.insertGrant({ grant: command("alice@x", 1) });
        await s.transition(grant.id, { from: ["pending"], to: "approved" });
        await s.spendChallenge("n", "alice@x", 100);
        await s.close();
        const next = await connect();
        expect((await next.getUser("alice@x"))?.email).toBe("alice@x");
        expect((await next.getGrant(grant.id))?.grant.status).toBe("approved");
        expect(await next.spendChallenge("n", "alice@x", 100)).toBe(false);
      });

      it("a write is visible to another process once flushed", async () => {
        const { s, connect } = await fresh();
        const other = await connect();
        const { grant } = await s.insertGrant({ grant: command("a", 1) });
        await committed(s);
        expect((await other.getGrant(grant.id))?.grant.status).toBe("pending");
      });
    });

    describe("passkeys, invites, web sessions", () => webStoreContract(fresh));
  });
}
