// Troop benchmark: intent latency submit -> `intent` frame at a connected nest socket (p50/p99),
// side by side with a nest polling GET /v1/nest/intents every 1 s; then the troop's memory per idle
// nest connection with N sockets open (default 10,000, measured; needs `ulimit -n` above 10,500), its CPU
// while they idle, and one intent broadcast to each of them (submit all -> every frame in). Drives the real
// `dist/apes idp serve` and `dist/apes troop serve` over HTTP and WebSocket (package ws) on loopback.
// Run with the pinned node: `node bench/troop/run.ts [--nests=10000] [--push=200] [--poll=12]`.
import { spawn } from "node:child_process";
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import WebSocket from "ws";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { formatSshPublicKey } from "../../protocol/keys.ts";
import { signingInput } from "../../protocol/signatures.ts";
import { TROOP_SUBPROTOCOL } from "../../protocol/troop.ts";
import { benchArgs, processCpuMs } from "../common.mjs";

const args = benchArgs();
const NESTS = Number(args.get("nests") ?? 10000);
const PUSH = Number(args.get("push") ?? 200);
const POLL = Number(args.get("poll") ?? 12);
const root = resolve(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const AUD = "troop.bench";
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

function quantile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
}
const ms = (x: number) => `${x.toFixed(2)} ms`;

function serve(argv: string[]): Promise<{ url: string; pid: number; kill(): Promise<void> }> {
  const p = spawn(bin, argv, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((res, rej) => {
    let buf = "";
    p.stderr!.setEncoding("utf8");
    p.stderr!.on("data", (c: string) => {
      buf += c;
      const m = /"msg":"listening","url":"([^"]+)"/.exec(buf);
      if (m) {
        buf = "";
        res({
          url: m[1]!,
          pid: p.pid!,
          kill: () =>
            new Promise((r) => {
              p.once("exit", () => r());
              p.kill("SIGTERM");
            }),
        });
      }
    });
    p.once("exit", (code) => rej(new Error(`${argv[0]} exited ${code}: ${buf}`)));
  });
}

async function post(url: string, body: unknown, token?: string) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function troopTokenOf(idp: string, email: string, key: KeyObject): Promise<string> {
  const { challenge } = (await post(`${idp}/api/auth/challenge`, { id: email })).body as {
    challenge: string;
  };
  const signature = sign(null, signingInput("login", idp, email, challenge), key).toString("base64");
  const { token } = (await post(`${idp}/api/auth/authenticate`, { id: email, challenge, signature }))
    .body as {
    token: string;
  };
  const r = await post(`${idp}/token`, { grant_type: EXCHANGE, subject_token: token, audience: AUD });
  if (r.status !== 200) throw new Error(`exchange: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.access_token as string;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]);
}

function open(
  wsUrl: string,
  token: string,
  onFrame?: (f: { type: string; intent?: { id: string } }) => void,
) {
  return new Promise<WebSocket>((res, rej) => {
    const ws = new WebSocket(wsUrl, [TROOP_SUBPROTOCOL], {
      headers: { authorization: `Bearer ${token}` },
      perMessageDeflate: false,
    });
    ws.on("message", (d) => {
      const f = JSON.parse(d.toString());
      if (f.type === "hello") res(ws);
      onFrame?.(f);
    });
    ws.on("error", rej);
    ws.on("unexpected-response", (_q, r) => rej(new Error(`refused ${r.statusCode}`)));
  });
}

async function pool<T>(n: number, width: number, f: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) {
        const i = next++;
        out[i] = await f(i);
      }
    }),
  );
  return out;
}

const work = mkdtempSync(join(tmpdir(), "apes-bench-troop-"));
const idpData = join(work, "idp");
const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const line = formatSshPublicKey(publicKey, "bench");
// N+3 identities straight into the IdP's store (`apes idp users add` would be one process each).
const store = openSqliteStore(idpData);
await store.addUser({ email: "alice@bench.test", kind: "human", publicKey: line, createdAt: 1 });
const nests = ["push", "poll", ...Array.from({ length: NESTS }, (_, i) => `n${i}`)].map(
  (n) => `${n}+agent@bench.test`,
);
for (const email of nests)
  await store.addUser({ email, kind: "agent", owner: "alice@bench.test", publicKey: line, createdAt: 1 });
await store.close();
const off = [
  "--rate-limit",
  "off",
  "--login-rate-limit",
  "off",
  "--token-rate-limit",
  "off",
  "--connection-rate",
  "off",
];
const caps = ["--max-connections", String(NESTS + 500), "--max-connections-per-client", String(NESTS + 500)];
const idp = await serve([
  "idp",
  "serve",
  "--listen",
  "127.0.0.1:0",
  "--data",
  idpData,
  "--log-level",
  "warn",
  ...off,
  ...caps,
]);
const troopArgs = (listen: string) => [
  "troop",
  "serve",
  "--idp",
  idp.url,
  "--client-id",
  AUD,
  "--listen",
  listen,
  "--data",
  join(work, "troop"),
  "--log-level",
  "warn",
  "--connection-rate",
  "off",
  "--auth-rate-limit",
  "off",
  ...caps,
];
let troop = await serve(troopArgs("127.0.0.1:0"));
const wsUrl = `${troop.url.replace(/^http/, "ws")}/v1/nest/socket`;
try {
  const alice = await troopTokenOf(idp.url, "alice@bench.test", privateKey);
  const [pushToken, pollToken] = await Promise.all([
    troopTokenOf(idp.url, nests[0]!, privateKey),
    troopTokenOf(idp.url, nests[1]!, privateKey),
  ]);
  console.log(`machine: ${process.arch}, node ${process.version}, nests ${NESTS}`);

  // 1. Push: a connected nest; each intent submitted after the previous one arrived.
  const arrived = new Map<string, number>();
  let wake: (() => void) | undefined;
  const pushWs = await open(wsUrl, pushToken, (f) => {
    if (f.type === "intent" && f.intent) {
      arrived.set(f.intent.id, performance.now());
      pushWs.send(JSON.stringify({ type: "ack", intent_id: f.intent.id }));
      wake?.();
    }
  });
  const body = (id: string, nest: string) => ({ id, nest, kind: "restart", agent: "worker" });
  const push: number[] = [];
  for (let i = 0; i < PUSH + 20; i++) {
    const id = `push-${i}`;
    const got = new Promise<void>((r) => {
      wake = r;
    });
    const t0 = performance.now();
    const r = await post(`${troop.url}/v1/intents`, body(id, nests[0]!), alice);
    if (r.status !== 201) throw new Error(`submit ${r.status}`);
    if (!arrived.has(id)) await got;
    if (i >= 20) push.push(arrived.get(id)! - t0); // 20 warm-up rounds
  }
  console.log(
    `push (socket): n=${push.length} p50 ${ms(quantile(push, 0.5))} p99 ${ms(quantile(push, 0.99))} max ${ms(Math.max(...push))}`,
  );

  // 2. Poll: a nest without a socket asks every 1 s; intents at random moments in between.
  const seen = new Map<string, number>();
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const res = await fetch(`${troop.url}/v1/nest/intents`, {
        headers: { authorization: `Bearer ${pollToken}` },
      });
      const { data } = (await res.json()) as { data: { id: string }[] };
      const now = performance.now();
      for (const it of data) {
        if (!seen.has(it.id)) seen.set(it.id, now);
        await post(`${troop.url}/v1/nest/frames`, { type: "ack", intent_id: it.id }, pollToken);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  const poll: number[] = [];
  for (let i = 0; i < POLL; i++) {
    await new Promise((r) => setTimeout(r, 200 + Math.random() * 1000));
    const id = `poll-${i}`;
    const t0 = performance.now();
    await post(`${troop.url}/v1/intents`, body(id, nests[1]!), alice);
    while (!seen.has(id)) await new Promise((r) => setTimeout(r, 5));
    poll.push(seen.get(id)! - t0);
  }
  polling = false;
  await poller;
  console.log(
    `poll (1 s):    n=${poll.length} p50 ${ms(quantile(poll, 0.5))} p99 ${ms(quantile(poll, 0.99))} max ${ms(Math.max(...poll))}`,
  );
  pushWs.close();

  // 3. Idle connections: the troop's RSS before and after N sockets, each authenticated and greeted.
  const t0 = performance.now();
  const tokens = await pool(NESTS, 16, (i) => troopTokenOf(idp.url, nests[i + 2]!, privateKey));
  const tokensMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 1500));
  const before = rssKiB(troop.pid);
  const t1 = performance.now();
  // Each idle nest acks what it gets (the broadcast below), and its arrival time is noted.
  const delivered = new Map<string, number>();
  let allDelivered: (() => void) | undefined;
  const sockets: WebSocket[] = [];
  await pool(NESTS, 50, async (i) => {
    const ws = await open(wsUrl, tokens[i]!, (f) => {
      if (f.type !== "intent" || !f.intent) return;
      delivered.set(f.intent.id, performance.now());
      ws.send(JSON.stringify({ type: "ack", intent_id: f.intent.id }));
      if (delivered.size === NESTS) allDelivered?.();
    });
    sockets[i] = ws;
  });
  const openMs = performance.now() - t1;
  await new Promise((r) => setTimeout(r, 3000));
  const after = rssKiB(troop.pid);
  const per = (after - before) / NESTS;
  console.log(
    `idle: ${NESTS} sockets opened in ${(openMs / 1000).toFixed(1)} s (tokens ${(tokensMs / 1000).toFixed(1)} s); troop RSS ${(before / 1024).toFixed(1)} -> ${(after / 1024).toFixed(1)} MiB = ${per.toFixed(1)} KiB per connection`,
  );
  // 3b. The troop's CPU while the N sockets sit idle, over 20 s: one round of its pings (--ping-interval 20s).
  const idleCpu0 = processCpuMs(troop.pid);
  await new Promise((r) => setTimeout(r, 20_000));
  const idleCpu = (processCpuMs(troop.pid) - idleCpu0) / 20_000;
  console.log(
    `idle CPU: ${(idleCpu * 100).toFixed(2)} % of one core with ${NESTS} sockets (20 s, one ping round)`,
  );
  // 3c. Broadcast: one intent to each of the N nests (submitted 50 at a time), until every nest
  // has its frame; bounded by a 120 s deadline.
  const everyone = new Promise<void>((r) => {
    allDelivered = r;
  });
  const bCpu0 = processCpuMs(troop.pid);
  const b0 = performance.now();
  await pool(NESTS, 50, async (i) => {
    const r = await post(`${troop.url}/v1/intents`, body(`all-${i}`, nests[i + 2]!), alice);
    if (r.status !== 201) throw new Error(`submit ${r.status}`);
  });
  const submittedMs = performance.now() - b0;
  const deadline = new Promise<"late">((r) => setTimeout(() => r("late"), 120_000).unref());
  if ((await Promise.race([everyone, deadline])) === "late")
    throw new Error(`broadcast: only ${delivered.size} of ${NESTS} frames within 120 s`);
  const broadcastMs = Math.max(...delivered.values()) - b0;
  const bCpu = processCpuMs(troop.pid) - bCpu0;
  console.log(
    `broadcast: one intent to each of ${NESTS} nests: all submitted in ${(submittedMs / 1000).toFixed(2)} s, all delivered ${(broadcastMs / 1000).toFixed(2)} s after the first submit (${Math.round(NESTS / (broadcastMs / 1000))} intents/s); troop CPU ${(bCpu / NESTS).toFixed(2)} ms per intent`,
  );
  // 4. Reconnect storm: STORM nests hold sockets; the troop restarts (SIGTERM, closes them with
  // 1001, starts again on the same port); each nest reconnects after 0-500 ms of jitter, then every
  // 250 ms until it is back. Measured from the SIGTERM to the last nest's hello.
  const STORM = Math.min(NESTS, Number(args.get("storm") ?? 1000));
  for (const s of sockets.slice(STORM)) s.terminate();
  let failures = 0;
  const back: Promise<void>[] = [];
  for (let i = 0; i < STORM; i++) {
    back.push(
      new Promise<void>((resolveBack) => {
        sockets[i]!.once("close", () => {
          const attempt = () =>
            open(wsUrl, tokens[i]!).then(
              (ws) => {
                sockets[i] = ws;
                resolveBack();
              },
              () => {
                failures++;
                setTimeout(attempt, 250);
              },
            );
          setTimeout(attempt, Math.random() * 500);
        });
      }),
    );
  }
  const s0 = performance.now();
  await troop.kill();
  troop = await serve(troopArgs(new URL(troop.url).host));
  const restartMs = performance.now() - s0;
  await Promise.all(back);
  const stormMs = performance.now() - s0;
  console.log(
    `storm: ${STORM} nests back ${(stormMs / 1000).toFixed(2)} s after SIGTERM (troop down and up in ${(restartMs / 1000).toFixed(2)} s), ${failures} refused attempts`,
  );
  for (const s of sockets) s.terminate();
} finally {
  await troop.kill();
  await idp.kill();
  rmSync(work, { recursive: true, force: true });
}
