import { execFileSync, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";

/**
 * A real PostgreSQL server for tests: Debian's postgresql 15 (initdb + pg_ctl) in a temp dir,
 * listening on a free loopback port only (no Unix socket), stopped by stop() and, failing that, when
 * the test process exits. initdb refuses to run as root: as root (CI) the cluster belongs to
 * `nobody`. Authentication: trust for the superuser `apes` on 127.0.0.1 only, and scram-sha-256 for
 * the role `apes_pw` (password PASSWORD_ROLE.password), to test password handling for real.
 * fsync is off: tests kill IdP processes, never the database server, so durability across an OS
 * crash is not what they check (and each test database is created anew).
 */

export const PG_BIN = "/usr/lib/postgresql/15/bin";
export const PASSWORD_ROLE = { user: "apes_pw", password: "s3cret-test-password" };

export interface PgServer {
  host: string;
  port: number;
  /** postgres://apes@127.0.0.1:PORT/postgres */
  adminUrl: string;
  /** A new empty database; its URL (superuser `apes`, trust; or owned by `owner`, e.g. PASSWORD_ROLE.user). */
  createDatabase(prefix?: string, owner?: string): Promise<string>;
  /** The postmaster's pid (its backends are its children). */
  pid(): number;
  stop(): void;
}

export function postgresAvailable(): boolean {
  return existsSync(join(PG_BIN, "initdb"));
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const running = new Set<() => void>();
process.on("exit", () => {
  for (const stop of running) stop();
});

let databases = 0;

export interface StartOptions {
  /** fsync on (benchmarks: durable commits as a real server does); default off for tests. */
  fsync?: boolean;
}

export async function startPostgres(options: StartOptions = {}): Promise<PgServer> {
  const base = mkdtempSync(join(tmpdir(), "apes-pg-"));
  const data = join(base, "data");
  const root = process.getuid?.() === 0;
  // nobody:nogroup on Debian; the cluster's files and the server belong to that user.
  const owner = root ? { uid: 65534, gid: 65534 } : undefined;
  if (owner) chownSync(base, owner.uid, owner.gid);
  const as = owner ? { uid: owner.uid, gid: owner.gid } : {};
  const env = { PATH: "/usr/bin:/bin", LANG: "C.UTF-8", HOME: base };
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(join(PG_BIN, cmd), args, { ...as, env, cwd: base, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${cmd} failed (${r.status ?? r.signal}):\n${r.stdout}${r.stderr}`);
  };
  run("initdb", ["-D", data, "-U", "apes", "--auth=reject", "-E", "UTF8", "--no-sync", "--no-instructions"]);
  writeFileSync(
    join(data, "pg_hba.conf"),
    [
      `host all ${PASSWORD_ROLE.user} 127.0.0.1/32 scram-sha-256`,
      "host all apes 127.0.0.1/32 trust",
      "host all all 127.0.0.1/32 reject",
      "",
    ].join("\n"),
  );
  if (owner) chownSync(join(data, "pg_hba.conf"), owner.uid, owner.gid);
  let port = 0;
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    const opts = [
      `-c listen_addresses=127.0.0.1`,
      `-c port=${port}`,
      `-c unix_socket_directories=''`,
      `-c fsync=${options.fsync ? "on" : "off"}`,
      "-c max_connections=200",
      "-c shared_buffers=32MB",
    ].join(" ");
    try {
      run("pg_ctl", ["-D", data, "-o", opts, "-l", join(base, "log"), "-w", "-t", "30", "start"]);
      break;
    } catch (e) {
      if (attempt >= 2) throw e; // the free port may have been taken meanwhile: try another
    }
  }
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    running.delete(stop);
    try {
      execFileSync(join(PG_BIN, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"], {
        ...as,
        env,
        cwd: base,
        stdio: "ignore",
      });
    } catch {
      // already gone
    }
    rmSync(base, { recursive: true, force: true });
  };
  running.add(stop);
  const adminUrl = `postgres://apes@127.0.0.1:${port}/postgres`;
  const admin = async <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  await admin((c) =>
    c.query(`CREATE ROLE ${PASSWORD_ROLE.user} LOGIN PASSWORD '${PASSWORD_ROLE.password}' CREATEDB`),
  );
  return {
    host: "127.0.0.1",
    port,
    adminUrl,
    createDatabase: (prefix, owner) => createDatabase(adminUrl, port, prefix, owner),
    pid: () => Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]),
    stop,
  };
}

let shared: Promise<PgServer> | undefined;

/**
 * The run's server (test/postgres-setup.ts, found through APES_TEST_PG_PORT), or else one started
 * for this process (a script, a single file run without the global setup), stopped at its exit.
 */
export function sharedPostgres(): Promise<PgServer> {
  shared ??= (async () => {
    const port = Number(process.env.APES_TEST_PG_PORT);
    if (port > 0) return attach(port);
    const server = await startPostgres();
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        server.stop();
        process.exit(1);
      });
    }
    return server;
  })();
  return shared;
}

/** A server another process started and stops: databases can be made on it, nothing else. */
function attach(port: number): PgServer {
  const adminUrl = `postgres://apes@127.0.0.1:${port}/postgres`;
  return {
    host: "127.0.0.1",
    port,
    adminUrl,
    createDatabase: (prefix, owner) => createDatabase(adminUrl, port, prefix, owner),
    pid: () => Number.NaN,
    stop: () => {},
  };
}

async function createDatabase(adminUrl: string, port: number, prefix = "t", owner?: string): Promise<string> {
  const name = `${prefix}_${process.pid}_${++databases}`;
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await c.query(`CREATE DATABASE ${name} TEMPLATE template0${owner ? ` OWNER ${owner}` : ""}`);
  } finally {
    await c.end();
  }
  return `postgres://${owner ?? "apes"}@127.0.0.1:${port}/${name}`;
}
