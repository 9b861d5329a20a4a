// Approval-pages benchmark: how soon a waiting agent learns of an approval made on the grant page
// (the "within 50 ms"). Drives the real `dist/apes idp serve` (issuer http://localhost:PORT,
// passkey pages on) over HTTP exactly as the page's script does: session cookie, CSRF token,
// POST /grants/<id>/approve/options, a passkey assertion (a software authenticator standing in for
// the browser), POST /grants/<id>/approve. The waiter is (a) an HTTP long poll of the agent
// (GET /api/grants/<id>, Prefer: wait, If-None-Match) and (b) the real CLI, `apes grants wait ID`.
// Run with the pinned node after `make build`: `node bench/approval-pages/run.ts [--samples=100 --cli=10]`.
import { spawn } from "node:child_process";
import { sign } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { signingInput } from "../../protocol/signatures.ts";
import { softPasskey } from "../../test/helpers/soft-passkey.ts";
import { cliUser } from "../../test/integration/cli-helpers.ts";
import { benchArgs } from "../common.mjs";
import { NO_RATE_LIMITS, startIdp } from "../idp-load.ts";

const args = benchArgs();
const SAMPLES = Math.min(1000, Number(args.get("samples") ?? 100));
const CLI_SAMPLES = Math.min(50, Number(args.get("cli") ?? 10));
const root = resolve(import.meta.dirname, "..", "..");
const bin = join(root, "dist", "apes");
const ALICE = "alice@bench.test";
const AGENT = "bot+agent@bench.test";

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const ms = (x: number) => x.toFixed(2);
const summary = (xs: number[]) =>
  `p50 ${ms(pct(xs, 50))} ms, p90 ${ms(pct(xs, 90))} ms, p99 ${ms(pct(xs, 99))} ms, max ${ms(Math.max(...xs))} ms`;

const port: number = await new Promise((res, rej) => {
  const s = createServer();
  s.once("error", rej);
  s.listen(0, "127.0.0.1", () => {
    const p = (s.address() as { port: number }).port;
    s.close(() => res(p));
  });
});
const issuer = `http://localhost:${port}`;
const url = `http://127.0.0.1:${port}`;

// --- seed: a human with a (software) passkey, and her agent with an Ed25519 key ---
const base = mkdtempSync(join(tmpdir(), "apes-bench-approval-"));
const dataDir = join(base, "data");
const passkey = softPasskey({ origin: issuer, rpId: "localhost" });
const cli = cliUser(AGENT, issuer);
{
  const store = openSqliteStore(dataDir);
  await store.addUser({ email: ALICE, kind: "human", createdAt: 1 });
  await store.addUser({ email: AGENT, kind: "agent", owner: ALICE, publicKey: cli.publicLine, createdAt: 1 });
  await store.addPasskey(passkey.record(ALICE));
  await store.close();
}

const { proc } = await startIdp([
  bin,
  ...["idp", "serve", "--listen", `127.0.0.1:${port}`, "--issuer", issuer, "--data", dataDir],
  ...["--log-level", "warn", ...NO_RATE_LIMITS],
]);

let cookie = "";
/** A call as the page's script makes it: same origin, the session's cookies. */
async function page(method: string, path: string, body?: unknown) {
  const res = await fetch(url + path, {
    method,
    headers: {
      origin: issuer,
      "sec-fetch-site": "same-origin",
      ...(cookie ? { cookie } : {}),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text);
  } catch {
    // a page
  }
  return { status: res.status, json, text, res };
}

// Passkey login, as the login page does it.
const { json: loginOptions } = await page("POST", "/login/options", {});
const verified = await page("POST", "/login/verify", {
  response: passkey.assert(loginOptions.options as { challenge: string }),
});
if (verified.status !== 200) throw new Error(`passkey login: ${verified.status} ${verified.text}`);
cookie = verified.res.headers
  .getSetCookie()
  .map((c) => c.split(";")[0])
  .join("; ");
const csrf = /name="csrf_token" value="([^"]+)"/.exec((await page("GET", "/delegations")).text)?.[1];
if (!csrf) throw new Error("no CSRF token on the delegations page");

// The agent's session token (key login).
const disco = (await (await fetch(`${url}/.well-known/openid-configuration`)).json()) as Record<
  string,
  string
>;
const path = (u: string) => new URL(u).pathname;
const { challenge } = (await (
  await fetch(url + path(disco.ddisa_auth_challenge_endpoint!), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: AGENT }),
  })
).json()) as { challenge: string };
const auth = (await (
  await fetch(url + path(disco.ddisa_auth_authenticate_endpoint!), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      id: AGENT,
      challenge,
      signature: sign(null, signingInput("login", issuer, AGENT, challenge), cli.privateKey).toString(
        "base64",
      ),
    }),
  })
).json()) as { token: string };
const agentHeaders = { authorization: `Bearer ${auth.token}`, "content-type": "application/json" };

let n = 0;
async function newGrant(): Promise<{ id: string; etag: string }> {
  const res = await fetch(`${url}/api/grants`, {
    method: "POST",
    headers: agentHeaders,
    body: JSON.stringify({
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: ["systemctl", "restart", `nginx-${++n}`],
    }),
  });
  if (res.status !== 201) throw new Error(`create: ${res.status}`);
  return { id: ((await res.json()) as { id: string }).id, etag: res.headers.get("etag")! };
}

/** The page's approve: options (bound to the grant and decision), the assertion, the approve call. Returns when it was sent. */
async function approve(id: string): Promise<{ sent: number; stepUp: number; answered: number }> {
  const start = performance.now();
  const o = await page("POST", `/grants/${id}/approve/options`, { csrf_token: csrf });
  if (o.status !== 200) throw new Error(`options: ${o.status} ${o.text}`);
  const response = passkey.assert(o.json.options as { challenge: string });
  const sent = performance.now();
  const r = await page("POST", `/grants/${id}/approve`, { csrf_token: csrf, response });
  if (r.status !== 200) throw new Error(`approve: ${r.status} ${r.text}`);
  return { sent, stepUp: performance.now() - start, answered: performance.now() };
}

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

// (a) The agent's HTTP long poll.
const httpLatency: number[] = [];
const stepUps: number[] = [];
for (let i = 0; i < SAMPLES + 5; i++) {
  const g = await newGrant();
  let woke = 0;
  const waiter = fetch(`${url}/api/grants/${g.id}`, {
    headers: { ...agentHeaders, prefer: "wait=30", "if-none-match": g.etag },
  }).then(async (res) => {
    woke = performance.now();
    const body = (await res.json()) as { status: string };
    if (body.status !== "approved") throw new Error(`waiter saw ${body.status}`);
  });
  await sleep(5); // the waiter is parked
  const a = await approve(g.id);
  await waiter;
  if (i >= 5) {
    // the first few warm up connections and code paths
    httpLatency.push(woke - a.sent);
    stepUps.push(a.stepUp);
  }
}

// (b) The real CLI waiting: `apes grants wait ID` exits 0 once approved.
const cliLogin = await cli.run(["login", AGENT, "--key", cli.keyPath]);
if (cliLogin.code !== 0) throw new Error(`apes login: ${cliLogin.stderr}`);
const cliLatency: number[] = [];
for (let i = 0; i < CLI_SAMPLES; i++) {
  const g = await newGrant();
  const child = spawn(bin, ["grants", "wait", g.id, "--timeout", "1m"], { env: cli.env, stdio: "ignore" });
  const exited = new Promise<number>((res) =>
    child.once("exit", (code) => res(code ?? -1)).on("error", () => res(-1)),
  );
  await sleep(500); // started, session read, long poll parked
  const a = await approve(g.id);
  const code = await exited;
  const end = performance.now();
  if (code !== 0) throw new Error(`apes grants wait exited ${code}`);
  cliLatency.push(end - a.sent);
}

console.log(
  `approve sent -> agent's long poll answered (${httpLatency.length} samples): ${summary(httpLatency)}`,
);
console.log(
  `page step-up (options + assertion + approve answered) (${stepUps.length} samples): ${summary(stepUps)}`,
);
if (cliLatency.length) {
  console.log(
    `approve sent -> \`apes grants wait\` exited 0 (${cliLatency.length} samples, includes process exit): ${summary(cliLatency)}`,
  );
}
proc.kill("SIGTERM");
await new Promise((r) => proc.once("exit", r));
rmSync(base, { recursive: true, force: true });
rmSync(cli.home, { recursive: true, force: true });
