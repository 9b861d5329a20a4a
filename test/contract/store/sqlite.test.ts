import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";
import { withReadCache } from "../../../idp/store/cache.ts";
import { openSqliteStore } from "../../../idp/store/sqlite/store.ts";
import { storeContract } from "./contract.ts";

/** The SQLite store against the contract, file-backed in temp dirs, in both ways it is opened. */

const base = mkdtempSync(join(tmpdir(), "apes-store-contract-"));
afterAll(() => rmSync(base, { recursive: true, force: true }));
let dirs = 0;
const newDir = () => join(base, String(++dirs));

// As the offline admin commands open it: every call commits before it returns.
storeContract("sqlite", async () => {
  const dir = newDir();
  return { store: openSqliteStore(dir), connect: async () => openSqliteStore(dir) };
});

// As the server opens it: group commit, WAL checkpoints in a worker thread, the read cache in front;
// another process is an admin command.
storeContract("sqlite as the server runs it (group commit, checkpoint worker, read cache)", async () => {
  const dir = newDir();
  const store = openSqliteStore(dir, {
    groupCommit: true,
    checkpointer: {
      intervalMs: 20,
      onError: (e) => {
        throw e;
      },
    },
  });
  return { store: withReadCache(store), connect: async () => openSqliteStore(dir) };
});
