// The IdP under a flood of 1-byte body chunks (make bench-idp-flood): another client's latency and
// the server's memory, quiet vs during the flood. Loopback only, bounded in connections and time.
// Usage: node bench/idp-flood/run.mjs [--connections=150] [--seconds=6]
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { Agent, fetch as undiciFetch } from "undici";
import { watchRss } from "../../test/helpers/flood.ts";
import { addUser, api, loginWithKey, newKey, startIdp } from "../../test/helpers/idp.ts";
import { benchArgs, quantile, requireBuiltApes } from "../common.mjs";

requireBuiltApes();
const args = benchArgs();
const CONNECTIONS = Math.min(1000, Number(args.get("connections") ?? 150));
const SECONDS = Math.min(60, Number(args.get("seconds") ?? 6));

const dataDir = join(mkdtempSync(join(tmpdir(), "apes-bench-flood-")), "data");
const key = newKey("alice");
await addUser(dataDir, "alice@example.com", { publicKey: key.publicLine });
// The limits under test are the body and connection ones: rate limits off, or the flood (and the
// measuring client, one loopback address with it) would be answered 429 before reaching them.
const idp = await startIdp({
  dataDir,
  extraArgs: ["--login-rate-limit", "off", "--rate-limit", "off", "--log-level", "warn"],
});
// The measuring client has its own address: the attackers' one is over its connection limits.
const dispatcher = new Agent({ localAddress: "127.0.0.2" });
const other = (url, init) => undiciFetch(url, { ...init, dispatcher });
const token = await loginWithKey(idp.url, "alice@example.com", key.privateKey, other);
const me = api(idp.url, token, other);

/** Sequential GET /api/me while `busy()` holds; latencies in ms and failures. */
async function measure(busy) {
  const ms = [];
  let failed = 0;
  while (busy()) {
    const t = performance.now();
    const r = await me.get("/api/me").catch(() => undefined);
    ms.push(performance.now() - t);
    if (r?.status !== 200) failed++;
  }
  return { ms, failed };
}
const summary = (name, m, rss) =>
  `${name.padEnd(8)} n=${String(m.ms.length).padStart(5)}  p50 ${quantile(m.ms, 0.5).toFixed(2)} ms  ` +
  `p99 ${quantile(m.ms, 0.99).toFixed(2)} ms  max ${Math.max(...m.ms).toFixed(1)} ms  ` +
  `failed ${m.failed}  server RSS max ${rss.toFixed(0)} MiB`;

let rss = watchRss(idp.pid);
const quietUntil = Date.now() + 3000;
const quiet = await measure(() => Date.now() < quietUntil);
console.log(summary("quiet", quiet, rss.stop()));

rss = watchRss(idp.pid);
let flooding = true;
const attacker = new Worker(new URL("./attacker.mjs", import.meta.url), {
  workerData: { url: idp.url, path: "/api/auth/challenge", connections: CONNECTIONS, seconds: SECONDS },
});
const flood = new Promise((resolve) => attacker.once("message", resolve));
void flood.then(() => {
  flooding = false;
});
const during = await measure(() => flooding);
const result = await flood;
console.log(summary("flood", during, rss.stop()));
console.log(
  `flood: ${CONNECTIONS} connections x ${SECONDS} s, ${result.connections} opened, ` +
    `${(result.bytes / 2 ** 20).toFixed(0)} MiB written, answers ${JSON.stringify(result.statuses)}`,
);
await idp.stop();
await dispatcher.close();
