import { afterEach, describe, expect, it } from "vitest";
import type { TroopStore } from "../../../control/store/types.ts";
import type { IntentSubmission } from "../../../protocol/troop.ts";

/**
 * The contract every TroopStore (control/store/types.ts) meets, whatever the database: run it with
 * `troopStoreContract(name, open)` from a `*.test.ts` next to this file. `open(dir?)` opens a store on
 * new data, or again on the data of an earlier one (a restart).
 */
export function troopStoreContract(
  name: string,
  open: (again?: string) => Promise<{ store: TroopStore; dir: string }>,
) {
  describe(`troop store contract: ${name}`, () => {
    const handles: TroopStore[] = [];
    const fresh = async (again?: string) => {
      const o = await open(again);
      handles.push(o.store);
      return o;
    };
    afterEach(async () => {
      for (const h of handles.splice(0)) await h.close();
    });
    const stop = (id: string, nest = "n@x"): IntentSubmission => ({ id, nest, kind: "stop", agent: "w" });

    it("numbers intents per nest; the same id is the same intent or a conflict; survives a reopen", async () => {
      const { store, dir } = await fresh();
      const a = await store.submitIntent(stop("a"), "A", { sub: "alice@x" }, 10);
      const b = await store.submitIntent(stop("b"), "B", { sub: "alice@x", via: "tool@x" }, 11);
      const c = await store.submitIntent(stop("c", "m@x"), "C", { sub: "alice@x" }, 12);
      expect([a.outcome, b.outcome, c.outcome]).toEqual(["created", "created", "created"]);
      expect([a.stored.intent.seq, b.stored.intent.seq, c.stored.intent.seq]).toEqual([1, 2, 1]);
      expect(b.stored.intent).toMatchObject({
        submitted_by: "alice@x",
        submitted_via: "tool@x",
        created_at: 11,
      });
      expect((await store.submitIntent(stop("a"), "A", { sub: "bob@x" }, 20)).outcome).toBe("same");
      expect((await store.submitIntent(stop("a"), "other", { sub: "alice@x" }, 20)).outcome).toBe("conflict");
      await store.close();
      handles.splice(0);
      const again = await fresh(dir);
      expect((await again.store.getIntent("b"))?.intent.seq).toBe(2);
      expect((await again.store.submitIntent(stop("d"), "D", { sub: "alice@x" }, 30)).stored.intent.seq).toBe(
        3,
      );
      expect((await again.store.listIntents("n@x", 10)).map((i) => i.intent.id)).toEqual(["d", "b", "a"]);
      expect((await again.store.listIntents("n@x", 10, { seq: 3 })).map((i) => i.intent.id)).toEqual([
        "b",
        "a",
      ]);
    });

    it("applies events by the state rule, only for the nest addressed; repeats are no change", async () => {
      const { store } = await fresh();
      await store.submitIntent(stop("a"), "A", { sub: "alice@x" }, 1);
      expect((await store.pendingFor("n@x", 10)).map((p) => p.state)).toEqual(["queued"]);
      expect(await store.applyEvent("a", "m@x", "ack", undefined, 2)).toMatchObject({
        ok: false,
        reason: "not_addressed",
      });
      expect(await store.applyEvent("zz", "n@x", "ack", undefined, 2)).toMatchObject({
        ok: false,
        reason: "unknown",
      });
      expect(await store.applyEvent("a", "n@x", "done", undefined, 2)).toMatchObject({
        ok: false,
        reason: "invalid_transition",
      });
      expect(await store.applyEvent("a", "n@x", "delivered", undefined, 2)).toMatchObject({
        ok: true,
        changed: true,
      });
      expect((await store.pendingFor("n@x", 10)).map((p) => p.state)).toEqual(["delivered"]);
      expect(await store.applyEvent("a", "n@x", "delivered", undefined, 2)).toMatchObject({
        ok: true,
        changed: false,
      });
      expect(await store.applyEvent("a", "n@x", "ack", undefined, 3)).toMatchObject({
        ok: true,
        changed: true,
      });
      expect(await store.applyEvent("a", "n@x", "ack", undefined, 3)).toMatchObject({
        ok: true,
        changed: false,
      });
      expect(await store.pendingFor("n@x", 10)).toEqual([]);
      const done = await store.applyEvent("a", "n@x", "done", "ok", 4);
      expect(done).toMatchObject({ ok: true, stored: { state: "done", detail: "ok", updated_at: 4 } });
      expect(await store.applyEvent("a", "n@x", "failed", undefined, 5)).toMatchObject({
        ok: false,
        reason: "invalid_transition",
      });
    });

    it("records nests, their commanders and status; lists those an identity may command", async () => {
      const { store } = await fresh();
      await store.seenNest("n@x", ["alice@x", "bob@x"], undefined, 5);
      await store.seenNest("m@x", ["carol@x"], "carol@x", 6);
      await store.nestStatus("n@x", "1.0", [{ name: "w", state: "running", restarts: 0, since: 1 }], 7);
      expect(await store.getNest("n@x")).toEqual({
        id: "n@x",
        commanders: ["alice@x", "bob@x"],
        version: "1.0",
        agents: [{ name: "w", state: "running", restarts: 0, since: 1 }],
        lastSeen: 7,
      });
      expect((await store.nestsVisibleTo("bob@x")).map((n) => n.id)).toEqual(["n@x"]);
      expect((await store.nestsVisibleTo("m@x")).map((n) => n.id)).toEqual(["m@x"]);
      expect(await store.nestsVisibleTo("dave@x")).toEqual([]);
      // New commanders replace the old ones (the nest's latest token says who they are).
      await store.seenNest("n@x", ["alice@x"], undefined, 8);
      expect(await store.nestsVisibleTo("bob@x")).toEqual([]);
      expect((await store.getNest("m@x"))?.actingFor).toBe("carol@x");
    });

    it("concurrent submissions (here and in another process) get distinct seqs of one nest; of one id exactly one is created", async () => {
      const { store, dir } = await fresh();
      const other = (await fresh(dir)).store;
      const subs = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          (i % 2 ? store : other).submitIntent(stop(`c${i}`), `C${i}`, { sub: "alice@x" }, 10),
        ),
      );
      expect(subs.map((r) => r.stored.intent.seq).sort((a, b) => a - b)).toEqual(
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      const same = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          (i % 2 ? store : other).submitIntent(stop("one"), "ONE", { sub: "alice@x" }, 11),
        ),
      );
      expect(same.filter((r) => r.outcome === "created")).toHaveLength(1);
      expect(same.filter((r) => r.outcome === "same")).toHaveLength(9);
      expect(new Set(same.map((r) => r.stored.intent.seq)).size).toBe(1);
      // Of concurrent acks of one delivered intent, one changes it; the others are repeats.
      await store.applyEvent("one", "n@x", "delivered", undefined, 12);
      const acks = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          (i % 2 ? store : other).applyEvent("one", "n@x", "ack", undefined, 13),
        ),
      );
      expect(acks.every((r) => r.ok)).toBe(true);
      expect(acks.filter((r) => r.ok && r.changed)).toHaveLength(1);
    });
  });
}
