// Notification latency (make bench-notify): from the POST that creates a grant to the approver's
// webhook receiving it, and what a receiver that hangs does to grant creation and to other
// receivers. Loopback only; bounded in count (--grants, at most 1000) and time (60 s a phase).
// Usage: node bench/notify/run.mjs [--grants=200]
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addUser, api, loginWithKey, newKey, startIdp } from "../../test/helpers/idp.ts";
import { benchArgs, quantile, requireBuiltApes } from "../common.mjs";

requireBuiltApes();
const args = benchArgs();
const GRANTS = Math.min(1000, Number(args.get("grants") ?? 200));
const PHASE_MS = 60_000;

// The receiver: arrival time per grant id on /fast; /hang never answers (the IdP's deadline ends it).
const arrivals = new Map();
const hanging = new Set();
const receiver = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    if (req.url === "/hang") {
      hanging.add(res);
      res.on("close", () => hanging.delete(res));
      return;
    }
    const id = JSON.parse(Buffer.concat(chunks).toString("utf8")).data?.grant_id;
    if (id && !arrivals.has(id)) arrivals.set(id, performance.now());
    res.writeHead(204).end();
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const hookUrl = `http://127.0.0.1:${receiver.address().port}`;

const dir = mkdtempSync(join(tmpdir(), "apes-bench-notify-"));
const dataDir = join(dir, "data");
const keys = { alice: newKey("alice"), bob: newKey("bob"), bot: newKey("bot") };
await addUser(dataDir, "alice@example.com", { publicKey: keys.alice.publicLine });
await addUser(dataDir, "bob@example.com", { publicKey: keys.bob.publicLine });
await addUser(dataDir, "bot@example.com", {
  agent: true,
  owner: "alice@example.com",
  approvers: ["bob@example.com"],
  publicKey: keys.bot.publicLine,
});
writeFileSync(
  join(dir, "idp.toml"),
  '[notify]\nallow_local_targets = true\ntimeout = "2s"\nmax_attempts = 2\nretry_base = "1s"\n',
);
const idp = await startIdp({
  dataDir,
  extraArgs: ["--config", join(dir, "idp.toml"), "--rate-limit", "off", "--log-level", "warn"],
});
const as = async (name) =>
  api(idp.url, await loginWithKey(idp.url, `${name}@example.com`, keys[name].privateKey));
const [alice, bob, bot] = await Promise.all([as("alice"), as("bob"), as("bot")]);
const grants = (await alice.get("/.well-known/openid-configuration")).body.openape_grants_endpoint;
const subscribe = async (who, path) => {
  const r = await who.post("/api/notify/subscriptions", {
    channel: "webhook",
    target: hookUrl + path,
    events: ["pending"],
  });
  if (r.status !== 201) throw new Error(`subscribe: ${r.status} ${JSON.stringify(r.body)}`);
};

/**
 * Creates `n` grants one after another, each once the previous one's webhook has arrived (latency,
 * not throughput): creation round trips and pending -> received latencies in ms.
 */
async function phase(name, n) {
  const created = [];
  const latency = [];
  const end = Date.now() + PHASE_MS;
  for (let i = 0; i < n && Date.now() < end; i++) {
    const t = performance.now();
    const r = await bot.post(grants, {
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["echo", name, String(i)],
    });
    created.push(performance.now() - t);
    if (r.status !== 201) throw new Error(`grant: ${r.status}`);
    while (!arrivals.has(r.body.id) && Date.now() < end) await new Promise((res) => setImmediate(res));
    if (arrivals.has(r.body.id)) latency.push(arrivals.get(r.body.id) - t);
  }
  const f = (xs, p) => quantile(xs, p).toFixed(1);
  console.log(
    `${name.padEnd(18)} grants ${String(created.length).padStart(4)}  create p50 ${f(created, 0.5)} ms p99 ${f(created, 0.99)} ms  ` +
      `pending->webhook p50 ${f(latency, 0.5)} ms p99 ${f(latency, 0.99)} ms  received ${latency.length}/${created.length}`,
  );
}

/** `n` grants created back to back, then the time until the last webhook arrived (one subscription, delivered one at a time). */
async function burst(n) {
  const ids = [];
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    const r = await bot.post(grants, {
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["echo", "burst", String(i)],
    });
    ids.push(r.body.id);
  }
  const createdMs = performance.now() - t;
  const end = Date.now() + PHASE_MS;
  while (ids.some((id) => !arrivals.has(id)) && Date.now() < end)
    await new Promise((res) => setTimeout(res, 5));
  const last = Math.max(...ids.map((id) => arrivals.get(id) ?? Number.NaN));
  console.log(
    `burst              grants ${String(n).padStart(4)}  all created in ${createdMs.toFixed(0)} ms, all received ${(last - t).toFixed(0)} ms after the first POST (${((n / (last - t)) * 1000).toFixed(0)}/s)`,
  );
}

await subscribe(alice, "/fast");
await phase("one receiver", GRANTS);
await burst(Math.min(GRANTS, 200));
// Bob's receiver hangs: each of its deliveries holds a worker slot until the 2 s deadline.
await subscribe(bob, "/hang");
await phase("+ one that hangs", Math.min(GRANTS, 100));
await idp.stop();
for (const res of hanging) res.destroy();
receiver.close();
