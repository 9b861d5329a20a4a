// IdP on PostgreSQL: full grant lifecycles (create -> approve -> token -> consume) per second at 50
// clients, side by side in one run, for SQLite one instance, PostgreSQL one instance and PostgreSQL
// two instances behind a round-robin client (each request goes to the next instance); then the
// cross-instance notification latency: a waiter (Prefer: wait) parked on instance A, the grant
// approved on instance B. Drives real `dist/apes idp serve` processes over HTTP against a real
// PostgreSQL 15 the bench starts itself (test/helpers/postgres.ts, fsync on). Bounded: SECONDS per
// configuration, NOTIFY samples. Run with the pinned node: `node bench/idp-instances/run.ts`.
// More than BULK grants (e.g. --seed=1000000) are seeded in bulk SQL instead of through the store
// API (rows of the same shape; seeding is not what is measured).
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DatabaseSync } from "node:sqlite";
import pgClient from "pg";
import { Pool } from "undici";
import { openPostgresStore } from "../../idp/store/postgres/store.ts";
import { DB_FILE, openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { postgresTarget } from "../../server/postgres.ts";
import { startPostgres } from "../../test/helpers/postgres.ts";
import { benchArgs } from "../common.mjs";
import {
  approvalToWaiter,
  approveBody,
  benchUsers,
  type Call,
  jsonRequest,
  lifecycle,
  NO_RATE_LIMITS,
  SEED_STATUSES,
  seededGrant,
  seedStore,
  signIn,
  startIdp,
  stopIdp,
} from "../idp-load.ts";

const args = benchArgs();
const SEED = Number(args.get("seed") ?? 20_000);
const SECONDS = Number(args.get("seconds") ?? 6);
const CLIENTS = Number(args.get("clients") ?? 50);
const NOTIFY = Number(args.get("notify") ?? 200);
const ONLY = args.get("only")?.split(",");
// --synchronous-commit=off: where the time goes (commit flushes) — not a setting to run with.
const SYNC_COMMIT = args.get("synchronous-commit");
// --profile=DIR: the servers run from source under --cpu-prof (where the IdP's time goes).
const PROFILE = args.get("profile");
const POOL = args.get("pool") ?? "10";
const BULK = 50_000;
const root = resolve(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const ISSUER = "https://idp.bench.test";

/** CPU ms used so far by `pid` (Linux /proc; 0 when gone). */
const cpuMs = (pid: number) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return 0;
  }
};
/** CPU ms of the PostgreSQL server: the postmaster and its children (backends; exited ones' time is in cutime/cstime). */
const pgCpuMs = () => {
  const master = pg.pid();
  let total = 0;
  try {
    const f = readFileSync(`/proc/${master}/stat`, "utf8").split(") ")[1]!.split(" ");
    total += ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const f = readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1]!.split(" ");
      if (Number(f[1]) === master) total += ((Number(f[11]) + Number(f[12])) * 1000) / 100;
    } catch {
      // gone meanwhile
    }
  }
  return total;
};

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};
const ms = (x: number) => x.toFixed(2);

const base = mkdtempSync(join(tmpdir(), "apes-bench-instances-"));
const keyFile = join(base, "db.key");
writeFileSync(keyFile, randomBytes(32), { mode: 0o600 });
const pg = await startPostgres({ fsync: true });

const users = benchUsers(CLIENTS);
const { agents } = users;

/** The users, and up to BULK grants through the store API (more are seeded in bulk afterwards). */
const seed = (store: Store) => seedStore(store, users, SEED, { inFlight: 200, usersOnly: SEED > BULK });

/** SEED grants in bulk into PostgreSQL: generate_series, 100,000 rows per statement, then ANALYZE. */
async function bulkPostgres(url: string): Promise<void> {
  const c = new pgClient.Client({ connectionString: url });
  await c.connect();
  try {
    const now = Math.floor(Date.now() / 1000);
    for (let from = 0; from < SEED; from += 100_000) {
      await c.query(
        `INSERT INTO grants (id, type, requester, status, grant_type, request, match_key, created_at)
         SELECT gen_random_uuid()::text, 'command', r, ($3::text[])[1 + i % 7], 'once',
                jsonb_build_object('requester', r, 'target_host', 'web1', 'audience', 'escapes', 'grant_type', 'once', 'command', jsonb_build_array('seed', i::text)),
                'seed:' || i, $4::bigint - $5::bigint + i
         FROM generate_series($1::bigint, $2::bigint) AS i, LATERAL (SELECT ($6::text[])[1 + i % $7] AS r) AS x`,
        [
          from,
          Math.min(SEED, from + 100_000) - 1,
          SEED_STATUSES,
          now,
          SEED,
          agents.map((a) => a.email),
          agents.length,
        ],
      );
    }
    await c.query("ANALYZE grants");
  } finally {
    await c.end();
  }
}

/** SEED grants in bulk into the SQLite file: one transaction, one prepared insert. */
function bulkSqlite(dir: string): void {
  const db = new DatabaseSync(join(dir, DB_FILE));
  const now = Math.floor(Date.now() / 1000);
  const ins = db.prepare(
    "INSERT INTO grants (id, type, requester, status, grant_type, request, match_key, created_at) VALUES (?, 'command', ?, ?, 'once', ?, ?, ?)",
  );
  db.exec("BEGIN");
  for (let i = 0; i < SEED; i++) {
    const g = seededGrant(users, i, SEED, now);
    ins.run(g.id, g.request.requester, g.status, JSON.stringify(g.request), `seed:${i}`, g.created_at);
  }
  db.exec("COMMIT");
  db.exec("ANALYZE");
  db.close();
}

interface Instance {
  proc: ChildProcess;
  pool: Pool;
}

async function serve(location: string[]): Promise<Instance> {
  const { proc, url } = await startIdp([
    ...(PROFILE
      ? [process.execPath, "--cpu-prof", `--cpu-prof-dir=${PROFILE}`, join(root, "cli/main.ts")]
      : [bin]),
    ...["idp", "serve", "--listen", "127.0.0.1:0", "--issuer", ISSUER, "--log-level", "warn"],
    ...location,
    ...NO_RATE_LIMITS,
  ]);
  return { proc, pool: new Pool(url, { connections: CLIENTS + 10, pipelining: 1 }) };
}

/** Transactions committed in the bench's database so far (each store statement is one). */
async function commits(location: string[]): Promise<number> {
  if (location[0] !== "--database") return 0;
  const url = location[1]!;
  const s = await openPostgresStore({ target: postgresTarget(url) });
  const c = await s.connect();
  try {
    // The statistics are sent to the collector at the end of each transaction, within ~0.5 s.
    await new Promise((r) => setTimeout(r, 600));
    const { rows } = await c.query(
      "SELECT xact_commit::float8 AS n FROM pg_stat_database WHERE datname = current_database()",
    );
    return Number(rows[0].n);
  } finally {
    c.release();
    await s.close();
  }
}

async function run(name: string, location: string[], instances: number) {
  const servers = await Promise.all(Array.from({ length: instances }, () => serve(location)));
  let next = 0;
  /** A call on instance `on`, or on the next one in turn (round robin). */
  const on =
    (instance?: number): Call =>
    (method, path, token, body, headers) =>
      jsonRequest(servers[instance ?? next++ % servers.length]!.pool, method, path, token, body, headers);
  const call = on();
  const signedIn = await signIn(call, users);
  // Every approval carries alice's Ed25519 proof over the grant as created (docs/signatures.md).
  const proofFor = approveBody(ISSUER, users);

  let done = 0;
  let errors = 0;
  const lat: number[] = [];
  const deadline = performance.now() + SECONDS * 1000;
  const started = performance.now();
  const idpCpu = () => servers.reduce((sum, s) => sum + cpuMs(s.proc.pid!), 0);
  const [idpBefore, pgBefore] = [idpCpu(), pgCpuMs()];
  const commitsBefore = await commits(location);
  let n = 0;
  await Promise.all(
    signedIn.tokens.map(async (token) => {
      while (performance.now() < deadline) {
        const s = performance.now();
        if (await lifecycle(call, signedIn, token, proofFor, n++)) {
          done++;
          lat.push(performance.now() - s);
        } else errors++;
      }
    }),
  );
  const secs = (performance.now() - started) / 1000;
  const idpPer = (idpCpu() - idpBefore) / done;
  const pgPer = location[0] === "--database" ? (pgCpuMs() - pgBefore) / done : 0;
  const txPer = ((await commits(location)) - commitsBefore) / done;

  // Waiter on instance 0, approval on the last instance (the same one when there is one).
  const notify: number[] = [];
  const calls = { create: on(0), wait: on(0), approve: on(servers.length - 1) };
  for (let i = 0; i < NOTIFY; i++) {
    const token = signedIn.tokens[i % signedIn.tokens.length]!;
    notify.push(await approvalToWaiter(calls, signedIn, token, proofFor, i));
  }
  for (const s of servers) await stopIdp(s.proc, s.pool);
  const row = `| ${name} | ${(done / secs).toFixed(0)} | ${ms(idpPer)} | ${ms(pgPer)} | ${location[0] === "--database" ? txPer.toFixed(1) : "-"} | ${ms(pct(lat, 50))} / ${ms(pct(lat, 99))} | ${ms(pct(notify, 50))} / ${ms(pct(notify, 99))} | ${errors} |`;
  console.log(row);
  return row;
}

const rows: string[] = [];
const want = (k: string) => !ONLY || ONLY.includes(k);
try {
  if (want("sqlite")) {
    const dir = join(base, "sqlite");
    const s = openSqliteStore(dir, { groupCommit: true });
    await seed(s);
    await s.close();
    if (SEED > BULK) bulkSqlite(dir);
    rows.push(await run("SQLite, 1 instance", ["--data", dir], 1));
  }
  for (const [key, name, count] of [
    ["pg1", "PostgreSQL, 1 instance", 1],
    ["pg2", "PostgreSQL, 2 instances (round robin)", 2],
  ] as const) {
    if (!want(key)) continue;
    const url = await pg.createDatabase("bench");
    if (SYNC_COMMIT) {
      const c = await openPostgresStore({ target: postgresTarget(url) });
      const name = new URL(url).pathname.slice(1);
      const client = await c.connect();
      await client.query(
        `ALTER DATABASE ${name} SET synchronous_commit = ${SYNC_COMMIT === "off" ? "off" : "on"}`,
      );
      client.release();
      await c.close();
    }
    const s = await openPostgresStore({ target: postgresTarget(url), maxConnections: 10 });
    await seed(s);
    await s.close();
    if (SEED > BULK) await bulkPostgres(url);
    rows.push(
      await run(
        name,
        ["--database", url, "--database-key-file", keyFile, "--database-connections", POOL],
        count,
      ),
    );
  }
} finally {
  pg.stop();
  rmSync(base, { recursive: true, force: true });
}
console.log(
  `\n${SEED} grants stored; ${CLIENTS} clients; ${SECONDS} s per configuration; notification: ${NOTIFY} samples, waiter on instance 1, approval on the last\n`,
);
console.log(
  "| configuration | lifecycles/s | IdP CPU ms / lifecycle | PostgreSQL CPU ms / lifecycle | transactions / lifecycle | lifecycle p50 / p99 ms | notification p50 / p99 ms | errors |",
);
console.log("|---|---|---|---|---|---|---|---|");
for (const r of rows) console.log(r);
