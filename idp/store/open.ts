import { type PostgresTarget, postgresTarget } from "../../server/postgres.ts";
import { loadKeyFile } from "./postgres/key-file.ts";
import { openPostgresStore, type PostgresStore } from "./postgres/store.ts";
import { openSqliteStore, type SqliteOptions } from "./sqlite/store.ts";
import type { Store } from "./types.ts";

/**
 * Where the IdP's data lives: a data directory (SQLite, the embedded default) or a PostgreSQL URL
 * (several instances on one database). One place that turns the operator's choice into a Store,
 * for the server and the offline admin commands alike.
 */
export type StoreLocation =
  | { kind: "sqlite"; dataDir: string }
  | {
      kind: "postgres";
      url: string;
      /** A file holding the password (else PGPASSWORD / PGPASSFILE, read by the pg client). */
      passwordFile?: string;
      /** The database key file (key-file.ts): needed by everything that signs or rotates. */
      keyFile?: string;
    };

export interface OpenOptions {
  /** SQLite: group commit and the checkpoint worker (the server). */
  sqlite?: SqliteOptions;
  /** PostgreSQL: listen for other instances' changes (the server), pool size, error sink. */
  postgres?: { listen?: boolean; maxConnections?: number; onListenerError?(e: Error): void };
}

export interface OpenedStore {
  store: Store;
  /** The database key file's key (PostgreSQL with a key file). */
  sealKey?: Buffer;
  /** For messages and logs: the data dir, or user@host:port/db (never a password). */
  where: string;
  postgres?: PostgresStore;
}

/** The location from the command line (URL, or data dir) before anything is opened. */
export function checkLocation(location: StoreLocation): PostgresTarget | undefined {
  return location.kind === "postgres" ? postgresTarget(location.url, location.passwordFile) : undefined;
}

export async function openStore(location: StoreLocation, options: OpenOptions = {}): Promise<OpenedStore> {
  if (location.kind === "sqlite") {
    return { store: openSqliteStore(location.dataDir, options.sqlite), where: location.dataDir };
  }
  const target = postgresTarget(location.url, location.passwordFile);
  const sealKey = location.keyFile !== undefined ? loadKeyFile(location.keyFile) : undefined;
  const pgOpts = options.postgres ?? {};
  const store = await openPostgresStore({
    target,
    ...(sealKey ? { sealKey } : {}),
    listen: pgOpts.listen === true,
    ...(pgOpts.maxConnections !== undefined ? { maxConnections: pgOpts.maxConnections } : {}),
    ...(pgOpts.onListenerError ? { onListenerError: pgOpts.onListenerError } : {}),
  });
  return { store, ...(sealKey ? { sealKey } : {}), where: target.display, postgres: store };
}
