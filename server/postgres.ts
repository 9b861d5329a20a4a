import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";
import pg from "pg";

/**
 * The PostgreSQL connection settings from `--database URL` (or APES_DATABASE_URL). A password
 * never comes from the URL (it would sit on argv, in `ps` and in shell history): it is read from a
 * file (`--database-password-file`, checked 0600), or else libpq's way by the pg client, from
 * PGPASSWORD or the PGPASSFILE / ~/.pgpass file. Pure checks, no connection.
 */

export class DatabaseUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatabaseUrlError";
  }
}

export function isPostgresUrl(value: string): boolean {
  return /^postgres(ql)?:\/\//i.test(value);
}

export interface PostgresTarget {
  connectionString: string;
  password?: string;
  /** user@host:port/db: for logs and messages (never a secret). */
  display: string;
}

const MAX_URL = 2048;

/** Checks the URL (scheme, no password anywhere in it) and reads the password file, if any. */
export function postgresTarget(url: string, passwordFile?: string): PostgresTarget {
  if (url.length > MAX_URL) throw new DatabaseUrlError("the database URL is too long");
  if (!isPostgresUrl(url)) {
    throw new DatabaseUrlError("the database URL must start with postgres:// or postgresql://");
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DatabaseUrlError("the database URL is not a valid URL");
  }
  if (u.password !== "" || /^[^/]*\/\/[^/@]*:[^/@]*@/.test(url.replace(/^postgres(ql)?:/i, ""))) {
    throw new DatabaseUrlError(
      "the database URL contains a password: give it in a file (--database-password-file, mode 0600) or in PGPASSWORD / PGPASSFILE, never on the command line",
    );
  }
  for (const key of u.searchParams.keys()) {
    if (/pass/i.test(key)) {
      throw new DatabaseUrlError(
        `the database URL carries a password parameter (${key}): use --database-password-file or PGPASSWORD instead`,
      );
    }
  }
  if (u.hostname === "") throw new DatabaseUrlError("the database URL names no host");
  const target: PostgresTarget = {
    connectionString: url,
    display: `${decodeURIComponent(u.username) || "(default user)"}@${u.host}${u.pathname}`,
  };
  if (passwordFile !== undefined) target.password = readPasswordFile(passwordFile);
  return target;
}

/** The first line of a private file (no access for group or others), without its line end. */
export function readPasswordFile(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY);
  } catch (e) {
    throw new DatabaseUrlError(`cannot open the database password file: ${(e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new DatabaseUrlError(`the database password file ${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new DatabaseUrlError(
        `the database password file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`,
      );
    }
    if (st.size > 4096) throw new DatabaseUrlError(`the database password file ${path} is too large`);
    const password = readFileSync(fd, "utf8").split(/\r?\n/)[0] ?? "";
    if (password === "") throw new DatabaseUrlError(`the database password file ${path} is empty`);
    return password;
  } finally {
    closeSync(fd);
  }
}

// --- what every PostgreSQL store of apes shares (the IdP's, the troop's) ---

// Unix seconds and seq fit a double: read BIGINT as a number, for apes' connections only.
const types = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === 20 && format !== "binary") return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format);
  },
} as pg.CustomTypesConfig;

/** Client settings: the password (from the file) put into the URL in memory only, timeouts, a name. */
export function pgClientConfig(
  target: PostgresTarget,
  o: { statementTimeoutMs?: number; connectTimeoutMs?: number; applicationName: string },
): pg.ClientConfig {
  // pg lets the URL's fields override the config's: the password from the file goes into the URL
  // (only in memory here; the URL from the command line has none, postgresTarget checked).
  let connectionString = target.connectionString;
  if (target.password !== undefined) {
    const u = new URL(connectionString);
    u.password = encodeURIComponent(target.password);
    connectionString = u.toString();
  }
  return {
    connectionString,
    types,
    statement_timeout: o.statementTimeoutMs ?? 5000,
    // A connection left inside a transaction (a bug, a killed request) cannot hold locks for long.
    idle_in_transaction_session_timeout: 10_000,
    connectionTimeoutMillis: o.connectTimeoutMs ?? 5000,
    application_name: o.applicationName,
    keepAlive: true,
  };
}

export interface PgMigration {
  version: number;
  what: string;
  sql: string;
}

/**
 * Brings a schema to the newest version. Several instances starting at once serialise on a session
 * advisory lock (`lock`, one per schema): the first applies what is missing, each migration in its
 * own transaction together with its row in `table`, and the others then find nothing left to do.
 * Returns the versions this call applied.
 */
export async function migratePostgres(
  client: pg.ClientBase,
  migrations: readonly PgMigration[],
  o: { table: string; lock: number },
): Promise<number[]> {
  const applied: number[] = [];
  await client.query("SELECT pg_advisory_lock($1)", [o.lock]);
  try {
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${o.table} (version INTEGER PRIMARY KEY, what TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${o.table}`);
    const current = rows[0]?.v ?? 0;
    const newest = migrations.at(-1)?.version ?? 0;
    if (current > newest) {
      throw new Error(
        `the database is at schema version ${current}, newer than this apes knows (${newest}): upgrade apes`,
      );
    }
    for (const m of migrations) {
      if (m.version <= current) continue;
      await client.query("BEGIN");
      try {
        await client.query(m.sql);
        await client.query(`INSERT INTO ${o.table} (version, what) VALUES ($1, $2)`, [m.version, m.what]);
        await client.query("COMMIT");
      } catch (e) {
        await client.query("ROLLBACK");
        throw e;
      }
      applied.push(m.version);
    }
  } finally {
    await client.query("SELECT pg_advisory_unlock($1)", [o.lock]);
  }
  return applied;
}
