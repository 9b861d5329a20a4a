// IdP benchmark: full grant lifecycles (create -> approve -> token -> consume) per second at 1, 10
// and 50 concurrent clients with p50/p99 per request type, on a store already holding 100,000
// grants, each level alternating slices with the floor server (bench/idp/floor.ts: the same
// signatures, verifications and SQLite writes per lifecycle, nothing else) to report ours as a
// percentage of it; then approval-to-waiter notification latency (Prefer: wait). Drives the real
// `dist/apes idp serve` process over HTTP. Run with the pinned node: `node bench/idp/run.ts`.
import { execFileSync, spawn } from "node:child_process";
import { sign } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { Pool } from "undici";
import { newSigningKeyRecord } from "../../idp/keys.ts";
import { DB_FILE, openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { benchArgs } from "../common.mjs";
import {
  approvalToWaiter,
  approveBody,
  benchUsers,
  type Call,
  jsonRequest,
  lifecycle,
  NO_RATE_LIMITS,
  type Step,
  seedStore,
  signIn,
  startIdp,
  stopIdp,
} from "../idp-load.ts";

const args = benchArgs();
const SEED = Number(args.get("seed") ?? 100_000);
const SECONDS = Number(args.get("seconds") ?? 8);
const LEVELS = (args.get("clients") ?? "1,10,50").split(",").map(Number);
const LOG_LEVEL = args.get("log-level") ?? "warn";
const NOTIFY_SAMPLES = Number(args.get("notify") ?? 300);
// --bearer-approve: the IdP with --allow-bearer-approve and approvals without a proof (what a proof costs).
const BEARER_APPROVE = args.has("bearer-approve");
const root = resolve(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const MAX_CLIENTS = Math.max(...LEVELS);

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => x.toFixed(2);

// --- seed ---
const base = mkdtempSync(join(tmpdir(), "apes-bench-idp-"));
const dataDir = join(base, "data");
const users = benchUsers(MAX_CLIENTS);
const { human, agents } = users;
const t = performance.now();
{
  // Group commit: the whole seed (one event-loop turn) is one transaction, committed by flush().
  const store = openSqliteStore(dataDir, { groupCommit: true });
  await store.addSigningKey(newSigningKeyRecord(1));
  await seedStore(store, users, SEED);
  await store.close();
}
console.log(
  `seeded ${SEED} grants, ${MAX_CLIENTS} agents in ${((performance.now() - t) / 1000).toFixed(1)} s`,
);

// --- server ---
// --profile=DIR runs the server from source under --cpu-prof (for optimizing), else the built binary.
const PROFILE = args.get("profile");
// --compare-bin=PATH: another build (e.g. main's dist/apes copied aside) on a copy of the same seeded
// data dir, run in the same alternating slices: a before/after in one run.
const COMPARE_BIN = args.get("compare-bin");
if (COMPARE_BIN) cpSync(dataDir, join(base, "data-compare"), { recursive: true });
// --compare-sql="...": SQL run on that copy first, to give an older build its own schema (the seed
// is made by this tree's store): e.g. the index a migration dropped, and its user_version.
const COMPARE_SQL = args.get("compare-sql");
if (COMPARE_BIN && COMPARE_SQL) {
  const db = new DatabaseSync(join(base, "data-compare", DB_FILE));
  db.exec(COMPARE_SQL);
  db.close();
}

/** Starts an IdP from `binPath` (or from source under --cpu-prof) on `dir`; logs everyone in. */
async function startServer(binPath: string | undefined, dir: string) {
  const serveArgs = [
    "idp",
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--data",
    dir,
    "--log-level",
    LOG_LEVEL,
  ].concat(NO_RATE_LIMITS, BEARER_APPROVE ? ["--allow-bearer-approve"] : []);
  const { proc, url } = await startIdp(
    binPath === undefined && PROFILE
      ? [process.execPath, "--cpu-prof", `--cpu-prof-dir=${PROFILE}`, join(root, "cli/main.ts"), ...serveArgs]
      : [binPath ?? bin, ...serveArgs],
  );
  const pool = new Pool(url, { connections: MAX_CLIENTS + 10, pipelining: 1 });
  const call: Call = (method, path, token, body, headers) =>
    jsonRequest(pool, method, path, token, body, headers);
  const signedIn = await signIn(call, users);
  // --bearer-approve: approvals without a proof.
  const approval = BEARER_APPROVE ? () => ({}) : approveBody(signedIn.issuer, users);
  return { proc, pool, call, signedIn, approval };
}
type Server = Awaited<ReturnType<typeof startServer>>;
const main = await startServer(undefined, dataDir);
const compare = COMPARE_BIN ? await startServer(COMPARE_BIN, join(base, "data-compare")) : undefined;

/**
 * The server's CPU time so far in ms (Linux /proc; NaN elsewhere). Per lifecycle it varies far less
 * than the wall-clock rate on a machine shared with other work.
 */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" })) || 100;
  } catch {
    return 100;
  }
})();
const serverCpuMs = (pid: number) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return Number.NaN;
  }
};

// --- the floor (bench/idp/floor.ts): the same signatures, verifications and writes, nothing else ---
const FLOOR_SCHEMA = args.get("floor-schema") ?? "bare";
if (FLOOR_SCHEMA !== "bare" && FLOOR_SCHEMA !== "apes") throw new Error("--floor-schema is bare or apes");
// --floor-crypto=pool: the floor signs and verifies on libuv's thread pool, as the IdP does.
const FLOOR_CRYPTO = args.get("floor-crypto") ?? "inline";
if (FLOOR_CRYPTO !== "inline" && FLOOR_CRYPTO !== "pool") throw new Error("--floor-crypto is inline or pool");
const floorProc = spawn(
  process.execPath,
  [
    join(import.meta.dirname, "floor.ts"),
    `--data=${base}`,
    `--seed=${SEED}`,
    `--approver-key=${human.publicKey.export({ format: "der", type: "spki" }).toString("base64")}`,
    // --floor-schema=apes: the floor on the IdP's own schema (every index), see floor.ts.
    `--schema=${FLOOR_SCHEMA}`,
    `--requesters=${MAX_CLIENTS}`,
    `--crypto=${FLOOR_CRYPTO}`,
  ],
  { stdio: ["ignore", "pipe", "inherit"] },
);
const floorUrl: string = await new Promise((res, rej) => {
  let buf = "";
  floorProc.stdout!.on("data", (c: Buffer) => {
    buf += c.toString();
    const m = /^(http:\/\/\S+)\n/.exec(buf);
    if (m) res(m[1]!);
  });
  floorProc.once("exit", (c) => rej(new Error(`floor exited ${c}`)));
});
const floorPool = new Pool(floorUrl, { connections: MAX_CLIENTS + 10, pipelining: 1 });
async function floorCall(path: string, body: unknown, token?: string) {
  const r = await floorPool.request({
    method: "POST",
    path,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: r.statusCode, body: (await r.body.json()) as Record<string, unknown> };
}
/** One floor lifecycle; the client signs the proof as it does for the IdP. */
async function floorLifecycle(n: number): Promise<boolean> {
  const c = await floorCall("/grants", {
    ...(FLOOR_SCHEMA === "apes" ? { requester: agents[n % agents.length]!.email } : {}),
    target_host: "web1",
    audience: "escapes",
    grant_type: "once",
    command: ["bench", String(n)],
  });
  const id = c.body.id as string;
  const signature = sign(null, Buffer.from(`approve:${id}`), human.privateKey).toString("base64");
  const a = await floorCall(`/grants/${id}/approve`, { signature });
  const tk = await floorCall(`/grants/${id}/token`, {});
  const cs = await floorCall(`/grants/${id}/consume`, {}, tk.body.authz_jwt as string);
  return c.status === 201 && a.status === 200 && tk.status === 200 && cs.body.status === "consumed";
}

// --- lifecycles: ours and the floor's, alternating slices at each level ---
const results: string[] = [];
const floorResults: string[] = [];
const compareResults: string[] = [];
// --floor-slices=N: each level runs N slices of ours and N of the floor's, alternating (0: no floor).
const SLICES = Number(args.get("floor-slices") ?? 2);
let seq = 0;
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const loadSeen: string[] = [];
for (const clients of LEVELS) {
  const lat: Record<Step, number[]> = { create: [], approve: [], token: [], consume: [] };
  type Stats = { done: number; errors: number; secs: number; cpu: number; lat?: Record<Step, number[]> };
  const mine: Stats = { done: 0, errors: 0, secs: 0, cpu: 0, lat };
  const cmp: Stats = { done: 0, errors: 0, secs: 0, cpu: 0 };
  let floorDone = 0;
  let floorErrors = 0;
  let floorSecs = 0;
  let floorCpu = 0;
  const run = async (srv: Server, st: Stats, seconds: number) => {
    const timed = async <T>(kind: Step, f: () => Promise<T>) => {
      const s = performance.now();
      const r = await f();
      st.lat?.[kind].push(performance.now() - s);
      return r;
    };
    const deadline = performance.now() + seconds * 1000;
    const started = performance.now();
    const cpuBefore = serverCpuMs(srv.proc.pid!);
    await Promise.all(
      Array.from({ length: clients }, async (_, i) => {
        const token = srv.signedIn.tokens[i]!;
        while (performance.now() < deadline) {
          if (await lifecycle(srv.call, srv.signedIn, token, srv.approval, seq++, timed)) st.done++;
          else st.errors++;
        }
      }),
    );
    st.secs += (performance.now() - started) / 1000;
    st.cpu += serverCpuMs(srv.proc.pid!) - cpuBefore;
  };
  // With --compare-bin, this build and the other take turns going first (slice by slice).
  let turn = 0;
  const ours = async (seconds: number) => {
    if (compare && turn++ % 2 === 1) {
      await run(compare, cmp, seconds);
      await run(main, mine, seconds);
    } else {
      await run(main, mine, seconds);
      if (compare) await run(compare, cmp, seconds);
    }
  };
  const floor = async (seconds: number) => {
    const deadline = performance.now() + seconds * 1000;
    const started = performance.now();
    const cpuBefore = serverCpuMs(floorProc.pid!);
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (performance.now() < deadline) {
          if (await floorLifecycle(seq++)) floorDone++;
          else floorErrors++;
        }
      }),
    );
    floorSecs += (performance.now() - started) / 1000;
    floorCpu += serverCpuMs(floorProc.pid!) - cpuBefore;
  };
  if (SLICES === 0) await ours(SECONDS);
  for (let s = 0; s < SLICES; s++) {
    // Alternate which goes first, so neither always runs on the warmer machine.
    if (s % 2 === 0) {
      await ours(SECONDS / SLICES);
      await floor(SECONDS / SLICES);
    } else {
      await floor(SECONDS / SLICES);
      await ours(SECONDS / SLICES);
    }
  }
  loadSeen.push(loadavg());
  const { done, errors, secs, cpu } = mine;
  const rate = done / secs;
  if (compare) {
    compareResults.push(
      `| ${clients} | ${rate.toFixed(0)} | ${(cmp.done / cmp.secs).toFixed(0)} | ${ms(cpu / done)} | ${ms(cmp.cpu / cmp.done)} | ${cmp.errors} |`,
    );
  }
  const line = `| ${clients} | ${rate.toFixed(0)} | ${ms(cpu / done)} | ${(
    ["create", "approve", "token", "consume"] as Step[]
  )
    .map((k) => `${ms(pct(lat[k], 50))} / ${ms(pct(lat[k], 99))}`)
    .join(" | ")} | ${errors} |`;
  results.push(line);
  if (SLICES > 0) {
    const floorRate = floorDone / floorSecs;
    floorResults.push(
      `| ${clients} | ${rate.toFixed(0)} | ${floorRate.toFixed(0)} | ${((100 * rate) / floorRate).toFixed(0)} % | ${ms(cpu / done)} | ${ms(floorCpu / floorDone)} | ${((100 * (floorCpu / floorDone)) / (cpu / done)).toFixed(0)} % | ${floorErrors} |`,
    );
  }
  console.log(
    `clients=${clients}: ${done} lifecycles in ${secs.toFixed(1)} s = ${rate.toFixed(0)}/s, errors ${errors}` +
      (SLICES > 0
        ? `; floor ${floorDone} in ${floorSecs.toFixed(1)} s = ${(floorDone / floorSecs).toFixed(0)}/s; load ${loadSeen.at(-1)}`
        : ""),
  );
}
floorProc.kill("SIGTERM");
await new Promise((r) => floorProc.once("exit", r));
await floorPool.close();

// --- notification latency: approve -> parked waiter answered ---
const notify: number[] = [];
const { call, signedIn } = main;
for (let i = 0; i < NOTIFY_SAMPLES; i++) {
  const token = signedIn.tokens[i % signedIn.tokens.length]!;
  notify.push(
    await approvalToWaiter({ create: call, wait: call, approve: call }, signedIn, token, main.approval, i),
  );
}

for (const srv of compare ? [main, compare] : [main]) await stopIdp(srv.proc, srv.pool);
rmSync(base, { recursive: true, force: true });

console.log(`\nstore: ${SEED} seeded grants; server log level ${LOG_LEVEL}; ${SECONDS} s per level\n`);
console.log(
  "| clients | lifecycles/s | server CPU ms / lifecycle | create p50 / p99 ms | approve p50 / p99 ms | token p50 / p99 ms | consume p50 / p99 ms | errors |",
);
console.log("|---|---|---|---|---|---|---|---|");
for (const l of results) console.log(l);
if (SLICES > 0) {
  console.log(
    `\nagainst the floor (bench/idp/floor.ts, --schema=${FLOOR_SCHEMA} --crypto=${FLOOR_CRYPTO}), ${SLICES} alternating slices each per level, load average after each level: ${loadSeen.join(" / ")}\n`,
  );
  console.log(
    "| clients | ours lifecycles/s | floor lifecycles/s | ours / floor | ours CPU ms / lifecycle | floor CPU ms / lifecycle | floor CPU / ours | floor errors |",
  );
  console.log("|---|---|---|---|---|---|---|---|");
  for (const l of floorResults) console.log(l);
}
if (compare) {
  console.log(`\nthis build against --compare-bin=${COMPARE_BIN} (same slices, same seeded data)\n`);
  console.log(
    "| clients | this lifecycles/s | compare lifecycles/s | this CPU ms / lifecycle | compare CPU ms / lifecycle | compare errors |",
  );
  console.log("|---|---|---|---|---|---|");
  for (const l of compareResults) console.log(l);
}
console.log(
  `\nnotification (approve sent -> waiter answered), ${NOTIFY_SAMPLES} samples: p50 ${ms(pct(notify, 50))} ms, p99 ${ms(pct(notify, 99))} ms, max ${ms(Math.max(...notify))} ms`,
);
