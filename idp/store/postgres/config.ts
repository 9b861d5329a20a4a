import { closeSync, constants, fstatSync, openSync, readFileSync } from "node:fs";

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
