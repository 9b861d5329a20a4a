import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";

/**
 * What every SQLite database of ours shares (the IdP's store, the troop's): a private file in a
 * private data dir, WAL with synchronous=NORMAL (a commit survives a killed process), a busy
 * timeout so the offline admin commands can write while the server runs, and numbered migrations.
 */

/** Migration N brings the database to user_version N. Append only: a released one is never edited. */
export interface Migration {
  version: number;
  what: string;
  sql: string;
}

/** Opens `dataDir/file`, creating the dir 0700 and the file 0600 (sqlite would use the umask). */
export function openPrivateSqlite(
  dataDir: string,
  file: string,
  busyTimeoutMs = 5000,
): { db: DatabaseSync; path: string } {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  const path = join(dataDir, file);
  if (!existsSync(path)) closeSync(openSync(path, "a", 0o600));
  chmodSync(path, 0o600);
  const db = new DatabaseSync(path, { timeout: busyTimeoutMs });
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("PRAGMA synchronous = NORMAL");
  return { db, path };
}

/** The WAL and shared-memory files appear on the first write: keep them as private as the database. */
export function privateWalFiles(path: string): void {
  for (const suffix of ["-wal", "-shm"]) if (existsSync(path + suffix)) chmodSync(path + suffix, 0o600);
}

/**
 * Brings the database to the newest version in one IMMEDIATE transaction, so concurrent first
 * starts (a server and an admin command) serialise; `after` runs inside it (idempotent fix-ups).
 */
export function migrate(db: DatabaseSync, migrations: readonly Migration[], after?: () => void): void {
  db.exec("BEGIN IMMEDIATE");
  try {
    const { user_version: current } = db.prepare("PRAGMA user_version").get() as { user_version: number };
    const newest = migrations.at(-1)?.version ?? 0;
    // An older apes would miss what the newer schema relies on (an index dropped, a counter kept).
    if (current > newest) {
      throw new Error(
        `${db.location() ?? "the database"} is at schema version ${current}, newer than this apes knows (${newest}): upgrade apes`,
      );
    }
    for (const m of migrations) {
      if (m.version <= current) continue;
      db.exec(m.sql);
      db.exec(`PRAGMA user_version = ${m.version}`);
    }
    after?.();
    db.exec("COMMIT");
  } catch (e) {
    db.exec("ROLLBACK");
    throw e;
  }
}
