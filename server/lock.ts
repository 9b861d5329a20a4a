import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";

/**
 * One server per data directory: two would each keep their own caches and wake only their own
 * waiters (`service` names the kind of server in the refusal, e.g. "IdP server"). The lock is an exclusive SQLite transaction on `server.lock` (fcntl locks underneath),
 * held for the process lifetime and released by the kernel however the process ends; the admin
 * commands never take it, so they keep working while the server runs.
 */

export const LOCK_FILE = "server.lock";
export const PID_FILE = "server.pid";

export class DataDirLockedError extends Error {
  readonly dataDir: string;
  readonly pid: number | undefined;
  constructor(dataDir: string, pid: number | undefined, service: string) {
    super(`another ${service}${pid ? ` (pid ${pid})` : ""} is already serving ${dataDir}`);
    this.name = "DataDirLockedError";
    this.dataDir = dataDir;
    this.pid = pid;
  }
}

/** Takes the data directory's lock or throws DataDirLockedError; release() gives it back. */
export function lockDataDir(dataDir: string, service = "server"): { release(): void } {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, LOCK_FILE);
  if (!existsSync(file)) closeSync(openSync(file, "a", 0o600));
  chmodSync(file, 0o600);
  const db = new DatabaseSync(file, { timeout: 0 });
  try {
    db.exec("PRAGMA journal_mode = MEMORY"); // nothing is ever written: no journal file
    db.exec("BEGIN EXCLUSIVE");
  } catch (e) {
    db.close();
    if (!/locked|busy/i.test((e as Error).message)) throw e;
    throw new DataDirLockedError(dataDir, holderPid(dataDir), service);
  }
  writeFileSync(join(dataDir, PID_FILE), `${process.pid}\n`, { mode: 0o600 });
  return {
    release() {
      if (db.isOpen) db.close();
    },
  };
}

function holderPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, PID_FILE), "utf8").trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
