// Nest benchmark: intent latency submit (REST POST /v1/intents) -> ack at the Nest -> the agent's
// process started, with a real IdP (TLS), a real troop (`apes troop serve`) and a real Nest
// (`apes daemon run` as _apes-nest, set up by `apes daemon init`), the setuid shim installed in a temp
// prefix: the same setup as test/e2e/nest-troop.test.ts. The measured intent is `restart` of a
// stopped agent: the Nest starts `apes agents run NAME` through the shim on the `always` grant the
// owner approved once (requester, IdP, verifier, then the agent's own login and exec). First with the
// Nest's socket (push), then with the socket refused (a forwarding proxy in front of the troop that
// answers every WebSocket upgrade 503) so the Nest falls back to its REST poll every 1 s.
// As root (installs the shim, adds users; all removed at the end).
// Run with the pinned node: `node bench/nest/run.ts [--push=20] [--poll=8]` (or `make bench-nest`).
import { type ChildProcess, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatOpenSshPrivateKey } from "../../protocol/keys.ts";
import {
  addUser,
  api,
  fetchTrusting,
  loginWithKey,
  loopbackCert,
  newKey,
  runApes,
  startIdp,
  trustCaIn,
} from "../../test/helpers/idp.ts";
import { installIntoTempPrefix, spawnAsUser } from "../../test/helpers/shim.ts";
import { startTroop, TROOP_AUDIENCE } from "../../test/helpers/troop.ts";
import { benchArgs } from "../common.mjs";

const args = benchArgs();
const PUSH = Math.min(100, Number(args.get("push") ?? 20));
const POLL = Math.min(50, Number(args.get("poll") ?? 8));
const DEADLINE = Date.now() + 15 * 60_000; // bounded: the whole run gives up after 15 minutes
if (process.getuid?.() !== 0) {
  console.error("bench/nest needs root (it installs the setuid shim and adds users)");
  process.exit(77);
}

const ALICE = "alice@example.com";
const NEST = "nest-bn+agent@example.com";
const AGENT = `nb${randomBytes(3).toString("hex")}`;
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

function quantile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
}
const fmt = (xs: number[]) =>
  `n=${xs.length} p50 ${quantile(xs, 0.5).toFixed(0)} ms, p99 ${quantile(xs, 0.99).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms`;
async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  ms = 60_000,
): Promise<T> {
  const end = Math.min(Date.now() + ms, DEADLINE);
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
const passwd = (name: string) => {
  try {
    return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
  } catch {
    return undefined;
  }
};

const inst = await installIntoTempPrefix();
const work = mkdtempSync(join(tmpdir(), "apes-bench-nest-"));
execFileSync("chmod", ["0755", work]);
const tls = loopbackCert(work);
execFileSync("chmod", ["0644", tls.cert]);
const key = newKey(ALICE);
await addUser(join(work, "idp"), ALICE, { publicKey: key.publicLine });
const idp = await startIdp({ dataDir: join(work, "idp"), tls });
const troop = await startTroop(idp.issuer, { extraArgs: ["--idp-ca", tls.cert] });
const aliceHome = mkdtempSync(join(tmpdir(), "apes-bench-nest-alice-"));
trustCaIn(aliceHome, tls.cert);
writeFileSync(join(aliceHome, "id"), formatOpenSshPrivateKey(key.privateKey, ALICE), { mode: 0o600 });
const alice = (a: string[]) =>
  runApes(a, { HOME: aliceHome, APES_TROOP: troop.url, APES_TROOP_AUDIENCE: TROOP_AUDIENCE });
const nestHome = join(inst.var, "lib", "apes-nest");
const agentHome = join(inst.var, "lib", "apes-agents", AGENT);
const nestToml = join(inst.etc, "apes", "nest.toml");
let nest: ChildProcess | undefined;
const seen = new Map<string, number>(); // intent id -> when the Nest logged "executing intent"
let nestLog = "";
let nestUid = 0;
let nestGid = 0;
const proxies: { close(): void }[] = [];

function startNest(): void {
  const child = spawnAsUser(
    { name: "_apes-nest", uid: nestUid, gid: nestGid },
    [inst.exec, "daemon", "run"],
    {
      env: { PATH: "/usr/bin:/bin", HOME: nestHome, LANG: "C.UTF-8" },
    },
  );
  let buf = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    const now = Date.now();
    nestLog = (nestLog + d).slice(-20000);
    buf += d;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      // Logged right after the ack is sent (the intent is in the journal, the ack on the wire).
      const m = /"msg":"executing intent".*"intent":"([^"]+)"/.exec(line);
      if (m && !seen.has(m[1]!)) seen.set(m[1]!, now);
    }
  });
  nest = child;
}
async function stopNest(): Promise<void> {
  if (!nest) return;
  const exited = new Promise((r) => nest!.once("exit", r));
  nest.kill("SIGTERM");
  await exited;
  nest = undefined;
}

try {
  const f = fetchTrusting(tls.cert);
  expect0(await alice(["login", ALICE, "--key", join(aliceHome, "id"), "--idp", idp.url]), "login");
  const init = JSON.parse(
    execFileSync(
      inst.exec,
      [
        "--json",
        "daemon",
        "init",
        "--idp",
        idp.url,
        "--troop",
        troop.url,
        "--troop-audience",
        TROOP_AUDIENCE,
      ].concat(["--owner", ALICE, "--host", "bn", "--ca-file", tls.cert]),
      { encoding: "utf8" },
    ),
  );
  expect0(await alice(["--json", "agents", "add", "--name", "nest-bn", "--key", init.public_key]), "enroll");
  const del = await alice(["--json", "delegate", "--to", NEST, "--audience", "apes-cli"]);
  expect0(del, "delegate");
  execFileSync(inst.exec, ["daemon", "init", "--delegation", JSON.parse(del.stdout).id], { stdio: "ignore" });
  // The REST fallback polls every 1 s (a top-level key, before any [section]).
  writeFileSync(nestToml, `poll_interval = "1s"\n${readFileSync(nestToml, "utf8")}`);
  if (!readFileSync(nestToml, "utf8").includes('poll_interval = "1s"'))
    throw new Error("nest.toml not changed");
  const pw = passwd("_apes-nest")!;
  nestUid = Number(pw[2]);
  nestGid = Number(pw[3]);
  trustCaIn(nestHome, tls.cert, { uid: nestUid, gid: nestGid });
  execFileSync(inst.shim, [
    "trust",
    "--idp",
    idp.url,
    "--ca-file",
    tls.cert,
    "--approvers",
    ALICE,
    "--map",
    `_apes-nest=${NEST}`,
    "--run-as",
    `root,${AGENT}`,
  ]);
  startNest();
  await until("the nest connected", () => nestLog.includes('"msg":"connected to the troop"'));
  // Spawned once, both grants approved (provision: exact command; start: `always`).
  const script = `/bin/date +%s%3N >> "$HOME/starts"; exec /bin/sleep 100000`;
  const spawned = await alice([
    "--json",
    "nest",
    "spawn",
    NEST,
    AGENT,
    "--approve",
    "--timeout",
    "90",
    "--",
    "/bin/sh",
    "-c",
    script,
  ]);
  expect0(spawned, "spawn");
  const session = await loginWithKey(idp.url, ALICE, key.privateKey, f);
  const ex = await api(idp.url, undefined, f).post("/token", {
    grant_type: EXCHANGE,
    subject_token: session,
    audience: TROOP_AUDIENCE,
  });
  const token = ex.body.access_token as string;
  const starts = () =>
    existsSync(join(agentHome, "starts"))
      ? readFileSync(join(agentHome, "starts"), "utf8").trim().split("\n")
      : [];
  const submit = async (url: string, kind: string, id: string) => {
    const r = await fetch(`${url}/v1/intents`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ id, nest: NEST, kind, agent: AGENT }),
    });
    if (r.status !== 201) throw new Error(`submit ${kind}: ${r.status} ${await r.text()}`);
  };
  const status = async () => {
    const r = await alice(["--json", "nest", "status", NEST]);
    return (JSON.parse(r.stdout) as { name: string; state: string }[]).find((a) => a.name === AGENT);
  };

  // One round: stop (not measured), then restart of the stopped agent, measured.
  const round = async (url: string, tag: string, i: number, gap: number) => {
    await submit(url, "stop", `${tag}-stop-${i}`);
    await until("stopped", async () => ((await status())?.state === "stopped" ? true : undefined));
    await new Promise((r) => setTimeout(r, gap));
    const before = starts().length;
    const id = `${tag}-restart-${i}`;
    const t0 = Date.now();
    await submit(url, "restart", id);
    const started = Number(await until("started", () => starts()[before]));
    const ack = await until("acked", () => seen.get(id));
    return { ack: ack - t0, started: started - t0 };
  };
  console.log(`machine: ${process.arch}, node ${process.version}; agent ${AGENT}`);
  const push = { ack: [] as number[], started: [] as number[] };
  for (let i = 0; i < PUSH + 2; i++) {
    const r = await round(troop.url, "push", i, 200);
    if (i < 2) continue; // warm-up
    push.ack.push(r.ack);
    push.started.push(r.started);
  }
  console.log(`push: submit -> ack at the Nest:    ${fmt(push.ack)}`);
  console.log(`push: submit -> agent started:       ${fmt(push.started)}`);

  // The Nest with its socket refused: a proxy forwards HTTP to the troop, refuses every upgrade.
  const target = new URL(troop.url);
  const proxy = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", async () => {
      const headers = Object.fromEntries(
        Object.entries(req.headers).filter(([k]) => !["host", "connection", "content-length"].includes(k)),
      ) as Record<string, string>;
      const r = await fetch(new URL(req.url!, target), {
        method: req.method!,
        headers,
        ...(chunks.length ? { body: Buffer.concat(chunks) } : {}),
      });
      res.writeHead(r.status, { "content-type": r.headers.get("content-type") ?? "application/json" });
      res.end(Buffer.from(await r.arrayBuffer()));
    });
  });
  proxy.on("upgrade", (_req, socket) =>
    socket.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
  );
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
  proxies.push(proxy);
  const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  await stopNest();
  writeFileSync(nestToml, readFileSync(nestToml, "utf8").replace(/^troop = .*$/m, `troop = "${proxyUrl}"`));
  startNest();
  await until("restored", async () => ((await status())?.state === "running" ? true : undefined));
  const poll = { ack: [] as number[], started: [] as number[] };
  for (let i = 0; i < POLL; i++) {
    // Submitted at a random moment of the Nest's 1 s poll period.
    const r = await round(troop.url, "poll", i, 200 + Math.floor(Math.random() * 1000));
    poll.ack.push(r.ack);
    poll.started.push(r.started);
  }
  console.log(`poll 1 s: submit -> ack at the Nest: ${fmt(poll.ack)}`);
  console.log(`poll 1 s: submit -> agent started:   ${fmt(poll.started)}`);
  console.log(
    `poll 5 min (expected, not run): submit -> ack p50 ~150 s (half the period), p99 ~297 s; start adds the push row's start time`,
  );
} finally {
  await stopNest().catch(() => undefined);
  for (const p of proxies) p.close();
  if (passwd(AGENT)) execFileSync("/usr/sbin/userdel", [AGENT]);
  await troop.stop();
  await idp.stop();
  await inst.cleanup();
}

function expect0(r: { code: number | null; stderr: string }, what: string): void {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${r.stderr}\n${nestLog.slice(-2000)}`);
}
