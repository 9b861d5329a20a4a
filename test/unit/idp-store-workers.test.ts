import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterEach, describe, expect, it } from "vitest";
import { openSqliteStore, type SqliteOptions } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import type { Grant } from "../../protocol/types.ts";

/**
 * The SQLite store as the workers of `serve --workers` use it: several connections (one per
 * process) on one file, each with group commit.
 */

const stores: Store[] = [];
const open = (dir: string, options: SqliteOptions = {}) => {
  const s = openSqliteStore(dir, options);
  stores.push(s);
  return s;
};
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});
const newDir = () => join(mkdtempSync(join(tmpdir(), "apes-store-workers-")), "d");
let n = 0;
const grant = (): Grant => ({
  id: `00000000-0000-4000-9000-${String(++n).padStart(12, "0")}`,
  type: "command",
  request: { requester: "a@x", target_host: "h", audience: "escapes", grant_type: "once", command: ["ls"] },
  status: "pending",
  created_at: 1,
});

describe("commitOnFlush (several processes share the write lock)", () => {
  it("flush() commits the batch at once: the write lock is free and another connection sees it before the turn ends", async () => {
    const dir = newDir();
    const s = open(dir, { groupCommit: true, commitOnFlush: true });
    const other = open(dir);
    const { grant: g } = await s.insertGrant({ grant: grant() });
    void s.lifecycle.flush?.();
    // Still in the same turn (no setImmediate has run): committed, and the lock is free for a write.
    expect((await other.getGrant(g.id))?.grant.id).toBe(g.id);
    await other.addUser({ email: "b@x", kind: "human", createdAt: 1 });
    expect((await s.getUser("b@x"))?.email).toBe("b@x");
  });

  it("without it the batch (and the write lock) is kept until the end of the turn", async () => {
    const dir = newDir();
    const s = open(dir, { groupCommit: true });
    const other = open(dir, { busyTimeoutMs: 0 });
    const { grant: g } = await s.insertGrant({ grant: grant() });
    const flushed = s.lifecycle.flush?.();
    expect(await other.getGrant(g.id)).toBeUndefined();
    await expect(other.addUser({ email: "b@x", kind: "human", createdAt: 1 })).rejects.toThrow(
      /locked|busy/i,
    );
    await flushed;
    expect((await other.getGrant(g.id))?.grant.id).toBe(g.id);
  });
});

/** Another connection (a thread standing in for another worker) takes the write lock for `ms` (-1: until terminated). */
async function holdWriteLock(dir: string, ms: number): Promise<Worker> {
  const w = new Worker(
    `const { workerData, parentPort } = require("node:worker_threads");
     const { DatabaseSync } = require("node:sqlite");
     const db = new DatabaseSync(workerData.file);
     db.exec("BEGIN IMMEDIATE");
     parentPort.postMessage("held");
     if (workerData.ms >= 0) setTimeout(() => { db.exec("COMMIT"); parentPort.postMessage("released"); }, workerData.ms);
     else setInterval(() => {}, 1000);`,
    { eval: true, workerData: { file: join(dir, "idp.sqlite"), ms } },
  );
  await new Promise((r) => w.once("message", r));
  return w;
}

describe("waiting for another process's write lock (commitOnFlush)", () => {
  it("a write waits until the lock is released, then succeeds", async () => {
    const dir = newDir();
    const s = open(dir, { groupCommit: true, commitOnFlush: true });
    const holder = await holdWriteLock(dir, 40);
    try {
      await s.addUser({ email: "late@x", kind: "human", createdAt: 1 });
      await s.lifecycle.flush?.();
      expect((await open(dir).getUser("late@x"))?.email).toBe("late@x");
    } finally {
      await holder.terminate();
    }
  });

  it("gives up with 'database is locked' after the busy timeout, and the next write works", async () => {
    const dir = newDir();
    const s = open(dir, { groupCommit: true, commitOnFlush: true, busyTimeoutMs: 100 });
    const holder = await holdWriteLock(dir, -1);
    await expect(s.addUser({ email: "x@x", kind: "human", createdAt: 1 })).rejects.toThrow(/locked/);
    await holder.terminate();
    await s.addUser({ email: "y@x", kind: "human", createdAt: 1 });
    await s.lifecycle.flush?.();
    expect((await open(dir).getUser("y@x"))?.email).toBe("y@x");
  });
});

describe("changeMarker across connections (the workers' caches)", () => {
  it("changes when another connection commits, not for this connection's own commits", async () => {
    const dir = newDir();
    const a = open(dir, { groupCommit: true, commitOnFlush: true });
    const b = open(dir, { groupCommit: true, commitOnFlush: true });
    const marker = () => b.lifecycle.changeMarker!();
    const before = marker();
    await b.addUser({ email: "own@x", kind: "human", createdAt: 1 });
    await b.lifecycle.flush?.();
    expect(marker()).toBe(before);
    await a.addUser({ email: "other@x", kind: "human", createdAt: 1 });
    expect(marker()).toBe(before); // not committed yet
    await a.lifecycle.flush?.();
    expect(marker()).not.toBe(before);
  });
});
