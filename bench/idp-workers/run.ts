// IdP on every core: full grant lifecycles (create -> approve -> token -> consume) per second at 50
// clients for `apes idp serve --workers N` on SQLite, N = 1 and 2 (--workers=1,2,...), in ONE run:
// one server per N, each on its own copy of one seeded data dir, measured in alternating slices
// (the order rotates every round), so the machine's background load falls on all alike. Per N: the
// rate, the CPU of the server's processes (primary + workers) and of this load generator per
// lifecycle, and the share of the time SQLite's write lock is held (sampled from /proc/locks: the
// WAL write lock is an fcntl lock on byte 120 of the -shm file, held from a batch's BEGIN IMMEDIATE
// to its COMMIT), then approval-to-waiter latency with the waiter and the approval on two
// different connections (the primary hands consecutive connections to different workers).
// --one-core adds one worker confined to CPU 0 (taskset), so one run also compares 1 and 2 cores.
// Run with the pinned node: `node bench/idp-workers/run.ts`.
import type { ChildProcess } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { Worker } from "node:worker_threads";
import { Pool } from "undici";
import { DB_FILE, openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { childPids } from "../../test/helpers/process.ts";
import { benchArgs, processCpuMs, quantile, requireBuiltApes } from "../common.mjs";
import {
  approvalToWaiter,
  approveBody,
  benchUsers,
  type Call,
  jsonRequest,
  lifecycle,
  NO_RATE_LIMITS,
  type Reply,
  type SignedIn,
  seedStore,
  signIn,
  startIdp,
  stopIdp,
} from "../idp-load.ts";

const args = benchArgs();
const SEED = Number(args.get("seed") ?? 20_000);
const SECONDS = Number(args.get("seconds") ?? 12); // per configuration, over all its slices
const SLICES = Number(args.get("slices") ?? 4);
const CLIENTS = Number(args.get("clients") ?? 50);
const WORKERS = (args.get("workers") ?? "1,2").split(",").map(Number);
const NOTIFY = Number(args.get("notify") ?? 100);
const SAMPLE_HZ = Number(args.get("lock-sample-hz") ?? 200);
const ISSUER = "https://idp.bench.test";
const bin = requireBuiltApes();
// --compare-bin=PATH: another build (e.g. main's dist/apes copied aside) run with each worker count
// in the same rotation, on its own copy of the seed; --compare-sql="..." is run on its copies first
// (the seed is made by this tree's store: give the older build its own schema).
const COMPARE_BIN = args.get("compare-bin");
const COMPARE_SQL = args.get("compare-sql");
const BUILDS = COMPARE_BIN ? [bin, COMPARE_BIN] : [bin];
// --one-core: also one worker confined to CPU 0 (taskset; its thread pool too), against which the
// unconfined configurations show what a second core gives (the load generator is never confined).
const ONE_CORE = args.has("one-core");
const CONFIGS: { workers: number; build: string; cpus?: string }[] = [];
for (const build of BUILDS) if (ONE_CORE) CONFIGS.push({ workers: 1, build, cpus: "0" });
for (const workers of WORKERS) for (const build of BUILDS) CONFIGS.push({ workers, build });

const base = mkdtempSync(join(tmpdir(), "apes-bench-workers-"));
const users = benchUsers(CLIENTS);

// --- one seeded data dir, copied for every configuration ---
{
  const store = openSqliteStore(join(base, "seed"), { groupCommit: true });
  await seedStore(store, users, SEED);
  await store.close();
}

// --- the write-lock sampler: a thread reading /proc/locks SAMPLE_HZ times a second ---
// counters[0]: samples, counters[1]: samples with the write lock held, per watched file (slot 2k, 2k+1)
const counters = new Int32Array(new SharedArrayBuffer(4 * 2 * CONFIGS.length));
const SAMPLER = `
const { workerData } = require("node:worker_threads");
const { readFileSync } = require("node:fs");
const c = workerData.counters;
const sleep = new Int32Array(new SharedArrayBuffer(4));
for (;;) {
  const locks = readFileSync("/proc/locks", "utf8").split("\\n");
  workerData.inodes.forEach((ino, k) => {
    Atomics.add(c, 2 * k, 1);
    // "N: POSIX  ADVISORY  WRITE PID MAJ:MIN:INODE START END": the WAL write lock is byte 120.
    if (locks.some((l) => l.includes(":" + ino + " 120 120") && l.includes(" WRITE "))) Atomics.add(c, 2 * k + 1, 1);
  });
  Atomics.wait(sleep, 0, 0, workerData.periodMs);
}`;

interface Server {
  workers: number;
  /** The worker count, and "(compare)" for --compare-bin's build. */
  label: string;
  proc: ChildProcess;
  pool: Pool;
  dir: string;
  origin: string;
  pids: number[];
  signedIn: SignedIn;
  /** A call on this server's pool, or on `via` (another connection to it). */
  call(
    method: string,
    path: string,
    token?: string,
    body?: unknown,
    headers?: Record<string, string>,
    via?: Pool,
  ): Promise<Reply>;
}

async function start(workers: number, build: string, cpus?: string): Promise<Server> {
  const compared = build !== bin;
  const label = `${workers}${cpus === undefined ? "" : ` on CPU ${cpus}`}${compared ? " (compare)" : ""}`;
  const dir = join(
    base,
    `w${workers}${cpus === undefined ? "" : `-cpu${cpus}`}${compared ? "-compare" : ""}`,
  );
  cpSync(join(base, "seed"), dir, { recursive: true });
  if (compared && COMPARE_SQL) {
    const db = new DatabaseSync(join(dir, DB_FILE));
    db.exec(COMPARE_SQL);
    db.close();
  }
  const serveArgs = ["idp", "serve", "--listen", "127.0.0.1:0", "--data", dir, "--issuer", ISSUER]
    .concat(["--log-level", "warn", "--workers", String(workers), "--connection-rate", "off"])
    .concat(NO_RATE_LIMITS);
  // taskset execs the server: the pid is the server's, its threads and children stay on `cpus`.
  const { proc, url } = await startIdp(
    cpus === undefined ? [build, ...serveArgs] : ["taskset", "-c", cpus, build, ...serveArgs],
  );
  const pool = new Pool(url, { connections: CLIENTS + 10, pipelining: 1 });
  const call: Server["call"] = (method, path, token, body, headers, via = pool) =>
    jsonRequest(via, method, path, token, body, headers);
  const signedIn = await signIn(call, users);
  const pids = [proc.pid!, ...(workers > 1 ? childPids(proc.pid!) : [])];
  return { workers, label, proc, pool, dir, origin: url, pids, signedIn, call };
}

const proofFor = approveBody(ISSUER, users);

const servers: Server[] = [];
for (const c of CONFIGS) servers.push(await start(c.workers, c.build, c.cpus));
const inodes = servers.map((s) => statSync(join(s.dir, `${DB_FILE}-shm`)).ino);
const sampler = new Worker(SAMPLER, {
  eval: true,
  workerData: { counters, inodes, periodMs: 1000 / SAMPLE_HZ },
});
sampler.unref();

interface Totals {
  done: number;
  errors: number;
  secs: number;
  serverCpu: number;
  clientCpu: number;
  samples: number;
  held: number;
  lat: number[];
  loads: string[];
}
const totals = new Map<string, Totals>(
  servers.map((s) => [
    s.label,
    { done: 0, errors: 0, secs: 0, serverCpu: 0, clientCpu: 0, samples: 0, held: 0, lat: [], loads: [] },
  ]),
);
const treeCpu = (s: Server) => s.pids.reduce((sum, pid) => sum + processCpuMs(pid), 0);
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
let n = 0;

async function slice(s: Server, seconds: number): Promise<void> {
  const t = totals.get(s.label)!;
  const k = servers.indexOf(s);
  const [samples0, held0] = [Atomics.load(counters, 2 * k), Atomics.load(counters, 2 * k + 1)];
  const cpu0 = treeCpu(s);
  const client0 = process.cpuUsage();
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    s.signedIn.tokens.map(async (token) => {
      while (performance.now() < deadline) {
        const t0 = performance.now();
        if (await lifecycle(s.call, s.signedIn, token, proofFor, n++)) {
          t.done++;
          t.lat.push(performance.now() - t0);
        } else t.errors++;
      }
    }),
  );
  t.secs += (performance.now() - started) / 1000;
  t.serverCpu += treeCpu(s) - cpu0;
  const client = process.cpuUsage(client0);
  t.clientCpu += (client.user + client.system) / 1000;
  t.samples += Atomics.load(counters, 2 * k) - samples0;
  t.held += Atomics.load(counters, 2 * k + 1) - held0;
  t.loads.push(loadavg());
}

console.log(
  `${SEED} grants seeded; ${CLIENTS} clients; workers ${WORKERS.join(", ")}${ONE_CORE ? " (and 1 on CPU 0)" : ""}; ${SLICES} alternating slices of ${(SECONDS / SLICES).toFixed(1)} s each; ${availableParallelism()} CPUs; load before ${loadavg()}`,
);
for (let round = 0; round < SLICES; round++) {
  // Rotate the order each round: no configuration always runs first (on the warmer machine).
  const order = servers.map((_, i) => servers[(i + round) % servers.length]!);
  for (const s of order) await slice(s, SECONDS / SLICES);
}

// --- notification latency: waiter and approval on two different connections ---
const notify = new Map<string, number[]>(servers.map((s) => [s.label, []]));
for (const s of servers) {
  const origin = s.origin;
  // Two pools of one connection each, opened one after the other: different workers (round robin).
  const waiterPool = new Pool(origin, { connections: 1 });
  const approverPool = new Pool(origin, { connections: 1 });
  await s.call("GET", "/.well-known/openid-configuration", undefined, undefined, {}, waiterPool);
  await s.call("GET", "/.well-known/openid-configuration", undefined, undefined, {}, approverPool);
  const out = notify.get(s.label)!;
  const on =
    (via: Pool): Call =>
    (method, path, token, body, headers) =>
      s.call(method, path, token, body, headers, via);
  const calls = { create: s.call, wait: on(waiterPool), approve: on(approverPool) };
  for (let i = 0; i < NOTIFY; i++) {
    const token = s.signedIn.tokens[i % s.signedIn.tokens.length]!;
    out.push(await approvalToWaiter(calls, s.signedIn, token, proofFor, i));
  }
  await waiterPool.close();
  await approverPool.close();
}

for (const s of servers) await stopIdp(s.proc, s.pool);
void sampler.terminate();
rmSync(base, { recursive: true, force: true });

const f = (x: number, d = 2) => x.toFixed(d);
console.log(
  "\n| workers | lifecycles/s | server CPU ms / lifecycle | server cores busy | client CPU ms / lifecycle | write lock held | lock ms / lifecycle | lifecycle p50 / p99 ms | notification p50 / p99 ms | errors |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|");
for (const s of servers) {
  const t = totals.get(s.label)!;
  const share = t.held / Math.max(1, t.samples);
  const nt = notify.get(s.label)!;
  console.log(
    `| ${s.label} | ${f(t.done / t.secs, 0)} | ${f(t.serverCpu / t.done)} | ${f(t.serverCpu / 1000 / t.secs)} | ${f(t.clientCpu / t.done)} | ${f(100 * share, 1)} % | ${f((share * t.secs * 1000) / t.done, 3)} | ${f(quantile(t.lat, 0.5))} / ${f(quantile(t.lat, 0.99))} | ${f(quantile(nt, 0.5))} / ${f(quantile(nt, 0.99))} | ${t.errors} |`,
  );
}
console.log("\nload average after each slice:");
for (const s of servers) console.log(`  ${s.label} worker(s): ${totals.get(s.label)!.loads.join(" | ")}`);
