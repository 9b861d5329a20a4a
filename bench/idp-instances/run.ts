// IdP on PostgreSQL: full grant lifecycles (create -> approve -> token -> consume) per second at 50
// clients, side by side in one run, for SQLite one instance, PostgreSQL one instance and PostgreSQL
// two instances behind a round-robin client (each request goes to the next instance); then the
// cross-instance notification latency: a waiter (Prefer: wait) parked on instance A, the grant
// approved on instance B. Drives real `dist/apes idp serve` processes over HTTP against a real
// PostgreSQL 15 the bench starts itself (test/helpers/postgres.ts, fsync on). Bounded: SECONDS per
// configuration, NOTIFY samples. Run with the pinned node: `node bench/idp-instances/run.ts`.
// More than BULK grants (e.g. --seed=1000000) are seeded in bulk SQL instead of through the store
// API (rows of the same shape; seeding is not what is measured).
import { spawn } from "node:child_process";
import { generateKeyPairSync, type KeyObject, randomBytes, randomUUID, sign } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DatabaseSync } from "node:sqlite";
import pgClient from "pg";
import { Pool } from "undici";
import { matchKey } from "../../idp/grants.ts";
import { openPostgresStore } from "../../idp/store/postgres/store.ts";
import { DB_FILE, openSqliteStore } from "../../idp/store/sqlite/store.ts";
import type { Store } from "../../idp/store/types.ts";
import { formatSshPublicKey } from "../../protocol/keys.ts";
import { signingInput } from "../../protocol/signatures.ts";
import type { Grant } from "../../protocol/types.ts";
import { postgresTarget } from "../../server/postgres.ts";
import { approvalInputOf, signApproval } from "../../test/helpers/idp.ts";
import { startPostgres } from "../../test/helpers/postgres.ts";
import { benchArgs } from "../common.mjs";

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

const human = generateKeyPairSync("ed25519");
const agents = Array.from({ length: CLIENTS }, (_, i) => ({
  email: `agent${i}@bench.test`,
  key: generateKeyPairSync("ed25519"),
}));

async function seed(store: Store): Promise<void> {
  await store.addUser({
    email: "alice@bench.test",
    kind: "human",
    publicKey: formatSshPublicKey(human.publicKey),
    createdAt: 1,
  });
  for (const a of agents) {
    await store.addUser({
      email: a.email,
      kind: "agent",
      owner: "alice@bench.test",
      publicKey: formatSshPublicKey(a.key.publicKey),
      createdAt: 1,
    });
  }
  const statuses: Grant["status"][] = ["used", "used", "used", "denied", "revoked", "expired", "pending"];
  const now = Math.floor(Date.now() / 1000);
  if (SEED > BULK) return;
  const batch: Promise<unknown>[] = [];
  for (let i = 0; i < SEED; i++) {
    const grant: Grant = {
      id: randomUUID(),
      type: "command",
      request: {
        requester: agents[i % agents.length]!.email,
        target_host: "web1",
        audience: "escapes",
        grant_type: "once",
        command: ["seed", String(i)],
      },
      status: statuses[i % statuses.length]!,
      created_at: now - SEED + i,
    };
    batch.push(store.insertGrant({ grant, matchKey: matchKey(grant.request) }));
    if (batch.length >= 200) await Promise.all(batch.splice(0));
  }
  await Promise.all(batch);
  await store.lifecycle?.flush?.();
}

const STATUSES = ["used", "used", "used", "denied", "revoked", "expired", "pending"];

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
          STATUSES,
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
    const requester = agents[i % agents.length]!.email;
    const request = {
      requester,
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["seed", String(i)],
    };
    ins.run(randomUUID(), requester, STATUSES[i % 7]!, JSON.stringify(request), `seed:${i}`, now - SEED + i);
  }
  db.exec("COMMIT");
  db.exec("ANALYZE");
  db.close();
}

interface Instance {
  proc: ReturnType<typeof spawn>;
  pool: Pool;
}

async function serve(location: string[]): Promise<Instance> {
  const proc = spawn(
    PROFILE ? process.execPath : bin,
    [
      ...(PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE}`, join(root, "cli/main.ts")] : []),
      "idp",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--issuer",
      ISSUER,
      "--log-level",
      "warn",
      ...location,
    ].concat(["--rate-limit", "off", "--login-rate-limit", "off", "--token-rate-limit", "off"]),
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const url: string = await new Promise((res, rej) => {
    let buf = "";
    proc.stderr!.on("data", (c: Buffer) => {
      buf += c.toString();
      const m = /"msg":"listening","url":"([^"]+)"/.exec(buf);
      if (m) {
        proc.stderr!.removeAllListeners("data");
        proc.stderr!.resume();
        res(m[1]!);
      }
    });
    proc.once("exit", (c) => rej(new Error(`idp exited ${c}: ${buf}`)));
  });
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
  const call = async (
    method: string,
    path: string,
    token: string | undefined,
    body?: unknown,
    headers: Record<string, string> = {},
    on?: number,
  ) => {
    const s = servers[on ?? next++ % servers.length]!;
    const h: Record<string, string> = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    if (body !== undefined) h["content-type"] = "application/json";
    const r = await s.pool.request({
      method: method as "GET",
      path,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.body.text();
    return { status: r.statusCode, body: text ? JSON.parse(text) : undefined, headers: r.headers };
  };
  const disco = (await call("GET", "/.well-known/openid-configuration", undefined)).body;
  const path = (u: string) => new URL(u).pathname;
  const G = path(disco.openape_grants_endpoint);
  const login = async (email: string, key: KeyObject) => {
    const { challenge } = (
      await call("POST", path(disco.ddisa_auth_challenge_endpoint), undefined, { id: email })
    ).body;
    const signature = sign(null, signingInput("login", ISSUER, email, challenge), key).toString("base64");
    const r = await call("POST", path(disco.ddisa_auth_authenticate_endpoint), undefined, {
      id: email,
      challenge,
      signature,
    });
    if (r.status !== 200) throw new Error(`login ${email}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token as string;
  };
  const humanToken = await login("alice@bench.test", human.privateKey);
  // Every approval carries alice's Ed25519 proof over the grant as created (docs/signatures.md).
  const proofFor = (grant: Record<string, unknown>) =>
    signApproval(approvalInputOf(ISSUER, grant, {}), "alice@bench.test", human.privateKey);
  const tokens = await Promise.all(agents.map((a) => login(a.email, a.key.privateKey)));

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
    tokens.map(async (token) => {
      while (performance.now() < deadline) {
        const s = performance.now();
        const c = await call("POST", G, token, {
          target_host: "web1",
          audience: "escapes",
          grant_type: "once",
          command: ["bench", String(n++)],
        });
        if (c.status !== 201) {
          errors++;
          continue;
        }
        const id = c.body.id;
        const a = await call("POST", `${G}/${id}/approve`, humanToken, { proof: proofFor(c.body) });
        const tk = await call("POST", `${G}/${id}/token`, token);
        const cs = await call("POST", `${G}/${id}/consume`, tk.body?.authz_jwt);
        if (a.status === 200 && tk.status === 200 && cs.body?.status === "consumed") done++;
        else errors++;
        lat.push(performance.now() - s);
      }
    }),
  );
  const secs = (performance.now() - started) / 1000;
  const idpPer = (idpCpu() - idpBefore) / done;
  const pgPer = location[0] === "--database" ? (pgCpuMs() - pgBefore) / done : 0;
  const txPer = ((await commits(location)) - commitsBefore) / done;

  // Waiter on instance 0, approval on the last instance (the same one when there is one).
  const notify: number[] = [];
  for (let i = 0; i < NOTIFY; i++) {
    const token = tokens[i % tokens.length]!;
    const c = await call(
      "POST",
      G,
      token,
      { target_host: "web1", audience: "escapes", grant_type: "once", command: ["n", String(i)] },
      {},
      0,
    );
    let answered = 0;
    const waiter = call(
      "GET",
      `${G}/${c.body.id}`,
      token,
      undefined,
      { prefer: "wait=30", "if-none-match": c.headers.etag as string },
      0,
    ).then((r) => {
      answered = performance.now();
      return r;
    });
    await new Promise((r) => setTimeout(r, 5));
    const sent = performance.now();
    await call(
      "POST",
      `${G}/${c.body.id}/approve`,
      humanToken,
      { proof: proofFor(c.body) },
      {},
      servers.length - 1,
    );
    const r = await waiter;
    if (r.status !== 200 || r.body.status !== "approved") throw new Error(`waiter got ${r.status}`);
    notify.push(answered - sent);
  }
  for (const s of servers) {
    s.proc.kill("SIGTERM");
    await new Promise((r) => s.proc.once("exit", r));
    await s.pool.close();
  }
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
