// CLI benchmark: wall time of `apes whoami` and of commands that make one IdP request (`grants list`,
// `agents list`, `delegations list`) against the bare single-executable
// floor, and approval-to-exit latency of `apes grants wait` with push (long-poll) vs 3 s polling.
//
//   make bench-cli                        (builds dist/apes first)
//   node bench/cli/run.mjs [--runs 30] [--warmup 5] [--waits 8] [--before PATH]
//
// --before PATH adds a second apes binary (an earlier build) to every case, interleaved in the same
// rounds against the same IdP and HOMEs, for a before/after comparison of a change in one run.
//
// Method (written up in bench/BENCHMARKS.md, section "CLI: sessions and grants"):
// - A real IdP (`dist/apes idp serve` on 127.0.0.1, its own temp data dir) with a human (alice) and
//   her agent (bot), each with its own HOME, logged in through `apes login` with keys from `apes keygen`.
// - Start-up: the bare SEA (a one-line console.log built from the same pinned node with the same SEA
//   settings), `apes whoami` (local: reads auth.json) and `apes grants list` (one discovery-cached
//   HTTP round trip to the IdP) run interleaved in rotating order; spawnSync wall time; warm-up
//   rounds discarded; medians and percentiles reported.
// - Approval latency: bot requests a grant, `apes grants wait <id>` starts; after a random delay
//   (0.5-3.5 s, so the polling phase is sampled uniformly) the bench approves the grant over HTTP
//   with alice's token and measures from just before the approve request to the exit of the wait
//   process. Push = default client (Prefer: wait long-poll); poll = APES_NO_PUSH=1 (3 s interval, the
//   behaviour of clients without push).
import { spawn, spawnSync } from "node:child_process";
import { sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { approvalDigestHex, approvalSigningInput } from "../../protocol/approval.ts";
import { parsePrivateKey } from "../../protocol/keys.ts";
import { buildBareSea, childTicks, quantile as q, requireBuiltApes } from "../common.mjs";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "30" },
    warmup: { type: "string", default: "5" },
    waits: { type: "string", default: "8" },
    before: { type: "string" },
  },
});
const runs = Number(values.runs);
const warmup = Number(values.warmup);
const waits = Number(values.waits);

const apes = requireBuiltApes();
const before = values.before;

const work = mkdtempSync(join(tmpdir(), "apes-bench-cli-"));
let idpProc;

function run(args, env) {
  const r = spawnSync(apes, args, { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`apes ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

function person(name) {
  const home = join(work, name);
  const env = {
    HOME: home,
    XDG_CONFIG_HOME: join(home, ".config"),
    XDG_CACHE_HOME: join(home, ".cache"),
    PATH: process.env.PATH ?? "/usr/bin:/bin",
  };
  const pub = run(["keygen", "--comment", `${name}@example.com`], env).trim();
  return { name, email: `${name}@example.com`, home, env, pub };
}

async function startIdp(dataDir) {
  const p = spawn(apes, ["idp", "serve", "--listen", "127.0.0.1:0", "--data", dataDir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  idpProc = p;
  let buf = "";
  return new Promise((resolve, reject) => {
    p.stderr.setEncoding("utf8");
    p.stderr.on("data", (c) => {
      buf += c;
      for (const line of buf.split("\n")) {
        try {
          const e = JSON.parse(line);
          if (e.msg === "listening") resolve(e.url);
        } catch {}
      }
    });
    p.once("exit", (code) => reject(new Error(`IdP exited ${code}: ${buf}`)));
  });
}

const fmt = (ms) => ms.toFixed(1).padStart(7);

try {
  const dataDir = join(work, "idp");
  const alice = person("alice");
  const bot = person("bot");
  run(["idp", "users", "add", alice.email, "--human", "--key", alice.pub, "--data", dataDir], process.env);
  run(
    [
      "idp",
      "users",
      "add",
      bot.email,
      "--agent",
      "--owner",
      alice.email,
      "--key",
      bot.pub,
      "--data",
      dataDir,
    ],
    process.env,
  );
  const url = await startIdp(dataDir);
  for (const p of [alice, bot]) {
    p.env.APES_IDP = url;
    run(["login", p.email], p.env);
  }
  const bare = buildBareSea(work);

  // --- start-up ---
  const cases = [
    { name: "bare SEA (console.log)", file: bare, args: [], env: {} },
    { name: "apes whoami", file: apes, args: ["whoami"], env: bot.env },
    { name: "apes grants list", file: apes, args: ["grants", "list"], env: bot.env },
    // More commands that make one IdP request (issue 16: each within one round trip of whoami).
    { name: "apes agents list", file: apes, args: ["agents", "list"], env: alice.env },
    { name: "apes delegations list", file: apes, args: ["delegations", "list"], env: alice.env },
    // Grant creation: a once grant is never reused, so each run creates one (POST, 201).
    { name: "apes grants request", file: apes, args: ["grants", "request", "--", "true"], env: bot.env },
  ];
  if (before) {
    for (const c of cases.slice(1)) cases.push({ ...c, name: `${c.name} [before]`, file: before });
  }
  for (const c of cases) {
    c.times = [];
    c.ticks = 0;
  }
  for (let round = 0; round < warmup + runs; round++) {
    for (let k = 0; k < cases.length; k++) {
      const c = cases[(round + k) % cases.length];
      const k0 = childTicks();
      const t0 = process.hrtime.bigint();
      const r = spawnSync(c.file, c.args, { env: c.env, stdio: "ignore" });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}`);
      if (round >= warmup) {
        c.times.push(ms);
        c.ticks += childTicks() - k0;
      }
    }
  }
  const base = q(cases[0].times, 0.5);
  console.log(`node ${process.version}; ${runs} interleaved runs after ${warmup} warm-up rounds`);
  const whoami = q(cases[1].times, 0.5);
  console.log(
    "command                              median     p10     p90   vs bare   vs whoami   cpu/run (apes only)",
  );
  for (const c of cases) {
    const med = q(c.times, 0.5);
    console.log(
      `${c.name.padEnd(33)} ${fmt(med)} ${fmt(q(c.times, 0.1))} ${fmt(q(c.times, 0.9))}   +${(med - base).toFixed(1)} ms   +${(med - whoami).toFixed(1)} ms   ${((c.ticks * 10) / runs).toFixed(1)} ms`,
    );
  }

  // --- approval-to-exit latency ---
  const aliceToken = JSON.parse(readFileSync(join(alice.home, ".config/apes/auth.json"), "utf8")).token;
  const aliceKey = parsePrivateKey(readFileSync(join(alice.home, ".config/apes/id_ed25519"), "utf8"));
  // Alice's approve body with her Ed25519 proof over the grant as fetched (docs/signatures.md).
  const approval = async (id) => {
    const res = await fetch(`${grantsUrl}/${id}`, { headers: { authorization: `Bearer ${aliceToken}` } });
    const g = await res.json();
    const issuer = url.replace(/\/+$/, "");
    const digest = approvalDigestHex({
      issuer,
      grantId: g.id,
      type: g.type,
      request: g.request,
      decision: "approve",
      grantType: g.request.grant_type,
      duration: g.request.duration,
    });
    const signed = approvalSigningInput(issuer, alice.email, digest);
    return JSON.stringify({
      proof: { type: "ed25519", signature: sign(null, signed, aliceKey).toString("base64") },
    });
  };
  const grantsUrl = (await (await fetch(`${url}/.well-known/openid-configuration`)).json())
    .openape_grants_endpoint;
  const latency = async (mode, file = apes) => {
    const env = mode === "poll" ? { ...bot.env, APES_NO_PUSH: "1" } : bot.env;
    const id = run(["grants", "request", "--", "true"], bot.env).trim();
    const child = spawn(file, ["grants", "wait", id, "--timeout", "60s"], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    let printed;
    child.stderr.on("data", (c) => {
      err += c;
    });
    // `grants wait` prints the final status on stdout: the moment the decision reached the client.
    child.stdout.on("data", () => {
      printed ??= process.hrtime.bigint();
    });
    const exited = new Promise((resolve) =>
      child.once("exit", (code) => resolve([code, process.hrtime.bigint()])),
    );
    for (let i = 0; i < 200 && !err.includes("waiting for a decision"); i++) await sleep(10);
    const body = await approval(id);
    await sleep(500 + Math.random() * 3000);
    const t0 = process.hrtime.bigint();
    const res = await fetch(`${grantsUrl}/${id}/approve`, {
      method: "POST",
      headers: { authorization: `Bearer ${aliceToken}`, "content-type": "application/json" },
      body,
    });
    if (res.status !== 200) throw new Error(`approve: ${res.status} ${await res.text()}`);
    const [code, t1] = await exited;
    if (code !== 0) throw new Error(`grants wait exited ${code}: ${err}`);
    return { printed: Number(printed - t0) / 1e6, exited: Number(t1 - t0) / 1e6 };
  };
  const results = { push: [], poll: [], ...(before ? { "push [before]": [] } : {}) };
  for (let i = 0; i < waits; i++) {
    results.push.push(await latency("push"));
    results.poll.push(await latency("poll"));
    if (before) results["push [before]"].push(await latency("push", before));
  }
  console.log(`\napproval -> \`apes grants wait\`, ${waits} runs each (approval after a random 0.5-3.5 s)`);
  console.log(
    "mode                       status on stdout: median    min    max | exit: median    min    max",
  );
  for (const [mode, xs] of Object.entries(results)) {
    const label = mode.startsWith("push")
      ? `push (Prefer: wait)${mode.slice(4)}`
      : "poll 3 s (APES_NO_PUSH=1)";
    const p = xs.map((x) => x.printed);
    const e = xs.map((x) => x.exited);
    console.log(
      `${label.padEnd(26)}                  ${fmt(q(p, 0.5))} ${fmt(q(p, 0))} ${fmt(q(p, 1))} |       ${fmt(q(e, 0.5))} ${fmt(q(e, 0))} ${fmt(q(e, 1))}`,
    );
  }
} finally {
  idpProc?.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}
