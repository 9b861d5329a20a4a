// Push-latency benchmark: from an approval to the moment a waiting `apes -- cmd` (the real setuid
// shim, installed into a temp prefix) starts the command, p50 and p99, for a CLI approval
// (`apes grants approve ID`, Ed25519-signed proof) and a browser approval (the grant page's JSON
// calls, made as the page's script makes them, with a software passkey: test/helpers/soft-passkey.ts).
// The command is `/bin/date +%s.%N`: the time it prints is when it ran. The two kinds alternate.
// The approval comes --park-ms (3 s) after the request waits: a person takes seconds, past any
// short idle budget of the shim's early verifier. As root (installs the shim; adds a user, removed
// at the end). TLS IdP on 127.0.0.1.
// Run with the pinned node after `make build`: `node bench/push/run.ts [--samples=20] [--park-ms=3000]`.
// Before/after in one run: `--compare=F1,...`, earlier builds installed by `node bench/elevate/run.ts
// --install-only=F` from their checkout (bench/installs.ts), each measured in the same rotation.
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { openSqliteStore } from "../../idp/store/sqlite/store.ts";
import { formatSshPublicKey } from "../../protocol/keys.ts";
import { apesBin, fetchTrusting, newKey, startIdp } from "../../test/helpers/idp.ts";
import { collect } from "../../test/helpers/process.ts";
import {
  ensureUser,
  installIntoTempPrefix,
  makeUserDir,
  spawnAsUser,
  VERIFY_USER,
  writeConfig,
} from "../../test/helpers/shim.ts";
import { softPasskey } from "../../test/helpers/soft-passkey.ts";
import { benchArgs } from "../common.mjs";
import { earlierInstalls } from "../installs.ts";

const args = benchArgs();
const SAMPLES = Math.min(200, Number(args.get("samples") ?? 20));
const WARMUP = 2;
// --timing: the requester's phases (APES_TIMING=1 through the shim) after the wake, medians.
const TIMING = args.has("timing");
// How long after the requester says it waits before approving (its long poll is parked by then).
const PARK_MS = Number(args.get("park-ms") ?? 3000);
const BENCH_USER = "apes-push";
const ALICE = "alice@example.com";
const AGENT = "bot@example.com";

if (process.getuid?.() !== 0) {
  console.error("bench/push needs root (it installs the setuid shim into a temporary prefix)");
  process.exit(77);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const f = (x: number) => x.toFixed(1);
const summary = (xs: number[]) =>
  `p50 ${f(pct(xs, 50))} ms, p90 ${f(pct(xs, 90))} ms, p99 ${f(pct(xs, 99))} ms, max ${f(Math.max(...xs))} ms`;
/** Wall-clock ms (CLOCK_REALTIME, what `date +%s.%N` prints), sub-millisecond. */
const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

const work = mkdtempSync(join(tmpdir(), "apes-bench-push-"));
chmodSync(work, 0o755); // the bench user reads its HOME and the certificate below it
const cleanups: (() => unknown)[] = [() => rmSync(work, { recursive: true, force: true })];
try {
  await main();
} finally {
  for (const c of cleanups.reverse()) await c();
}

async function main() {
  const inst = await installIntoTempPrefix();
  cleanups.push(() => inst.cleanup());
  const user = ensureUser(BENCH_USER);
  cleanups.push(() => spawnSync("userdel", [BENCH_USER]));
  ensureUser(VERIFY_USER, true);

  // Passkeys need a host name, so the issuer is https://localhost:PORT (the IdP listens on 127.0.0.1).
  const tls = { cert: join(work, "cert.pem"), key: join(work, "key.pem") };
  spawnSync(
    "openssl",
    ["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1", "-subj", "/CN=localhost"].concat([
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout",
      tls.key,
      "-out",
      tls.cert,
    ]),
    { stdio: "ignore" },
  );
  const port: number = await new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
  const issuer = `https://localhost:${port}`;
  const passkey = softPasskey({ origin: issuer, rpId: "localhost" });
  const human = newKey("alice");
  const agent = newKey("bot");
  const data = join(work, "idp");
  {
    const store = openSqliteStore(data);
    await store.addUser({
      email: ALICE,
      kind: "human",
      publicKey: formatSshPublicKey(human.publicKey),
      createdAt: 1,
    });
    await store.addUser({
      email: AGENT,
      kind: "agent",
      owner: ALICE,
      publicKey: agent.publicLine,
      createdAt: 1,
    });
    await store.addPasskey(passkey.record(ALICE));
    await store.close();
  }
  const idp = await startIdp({
    dataDir: data,
    port,
    tls,
    issuer,
    extraArgs: ["--log-level", "warn"],
  });
  cleanups.push(() => idp.stop());
  const tlsFetch = fetchTrusting(tls.cert);

  // The agent: logs in through the shim as the bench user.
  const home = makeUserDir(user, work);
  writeFileSync(join(home, "key.pem"), agent.privateKey.export({ type: "pkcs8", format: "pem" }), {
    mode: 0o600,
  });
  mkdirSync(join(home, ".config", "apes"), { recursive: true });
  writeFileSync(join(home, ".config", "apes", "config.toml"), `ca_file = "${tls.cert}"\n`);
  spawnSync("chown", ["-R", `${user.uid}:${user.gid}`, home]);
  const env: Record<string, string> = { HOME: home, PATH: "/usr/bin:/bin", LANG: "C.UTF-8" };
  if (TIMING) env.APES_TIMING = "1";
  const login = await collect(
    spawnAsUser(user, [inst.shim, "login", AGENT, "--key", join(home, "key.pem"), "--idp", issuer], { env }),
  );
  if (login.code !== 0) throw new Error(`agent login failed: ${login.stderr}`);
  // This build first, then the earlier ones (--compare): each gets the same policy.
  const builds = [
    { name: "this build", shim: inst.shim, config: inst.config },
    ...earlierInstalls(args.get("compare"), args.has("keep-compare"), cleanups),
  ];
  const policy = `issuers = ["${idp.issuer}"]\napprovers = ["${ALICE}"]\nhost = "${hostname()}"\nca_pem = '''\n${readFileSync(tls.cert, "utf8").trim()}\n'''\n[users]\n${BENCH_USER} = ["${AGENT}"]\n`;
  for (const b of builds) writeConfig(b, policy);

  // Alice on the CLI (root's process, its own HOME) with her Ed25519 key.
  const aliceHome = join(work, "alice");
  mkdirSync(join(aliceHome, ".config", "apes"), { recursive: true, mode: 0o700 });
  writeFileSync(join(aliceHome, "key.pem"), human.privateKey.export({ type: "pkcs8", format: "pem" }), {
    mode: 0o600,
  });
  writeFileSync(join(aliceHome, ".config", "apes", "config.toml"), `ca_file = "${tls.cert}"\n`);
  const aliceEnv = { HOME: aliceHome, PATH: "/usr/bin:/bin", LANG: "C.UTF-8" };
  const apes = (argv: string[]) => collect(spawn(apesBin(), argv, { env: aliceEnv }));
  const aliceLogin = await apes(["login", ALICE, "--key", join(aliceHome, "key.pem"), "--idp", issuer]);
  if (aliceLogin.code !== 0) throw new Error(`alice login failed: ${aliceLogin.stderr}`);

  // Alice in the browser: passkey login and the CSRF token, as the pages do.
  let cookie = "";
  const page = async (method: string, path: string, body?: unknown) => {
    const res = await tlsFetch(issuer + path, {
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
  };
  const { json: loginOptions, status: loStatus, text: loText } = await page("POST", "/login/options", {});
  if (loStatus !== 200) throw new Error(`login options: ${loStatus} ${loText}`);
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

  const approvers = {
    /** `apes grants approve ID`: from starting the process. */
    cli: async (id: string) => {
      const t0 = wallMs();
      const r = await apes(["grants", "approve", id]);
      if (r.code !== 0) throw new Error(`apes grants approve: ${r.code} ${r.stderr}`);
      return { t0, approverDone: wallMs() - t0 };
    },
    /** The page's approve button: options, the passkey assertion, the approve call. From the click. */
    browser: async (id: string) => {
      const t0 = wallMs();
      const o = await page("POST", `/grants/${id}/approve/options`, { csrf_token: csrf });
      if (o.status !== 200) throw new Error(`options: ${o.status} ${o.text}`);
      const response = passkey.assert(o.json.options as { challenge: string });
      const a = await page("POST", `/grants/${id}/approve`, { csrf_token: csrf, response });
      if (a.status !== 200) throw new Error(`approve: ${a.status} ${a.text}`);
      return { t0, approverDone: wallMs() - t0 };
    },
  };
  type Kind = keyof typeof approvers;
  type Series = { latency: number[]; approverTime: number[]; afterAnswer: number[] };
  const series = new Map<string, Series>();
  const seriesOf = (build: string, kind: Kind) => {
    const key = `${build}\t${kind}`;
    if (!series.has(key)) series.set(key, { latency: [], approverTime: [], afterAnswer: [] });
    return series.get(key)!;
  };
  const phases: Record<string, number[]> = {};

  for (let i = 0; i < WARMUP + SAMPLES; i++) {
    // Every build with both kinds each round, the order rotating so that drift hits all alike.
    const cases = builds.flatMap((b) => (["cli", "browser"] as Kind[]).map((kind) => ({ b, kind })));
    for (let c = 0; c < cases.length; c++) {
      const { b, kind } = cases[(c + i) % cases.length]!;
      const child = spawnAsUser(
        user,
        [b.shim, "--approval", "once", "--reason", `push ${i}`, "--", "/bin/date", "+%s.%N"],
        { env },
      );
      let stderr = "";
      const id: string = await new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`no pending grant within 20 s: ${stderr}`)), 20_000);
        child.stderr!.on("data", (chunk: Buffer) => {
          stderr += chunk.toString();
          const m = /apes: grant (\S+) needs approval/.exec(stderr);
          if (m) {
            clearTimeout(timer);
            res(m[1]!);
          }
        });
      });
      const done = collect(child);
      await sleep(PARK_MS);
      const a = await approvers[kind](id);
      const r = await done;
      if (r.code !== 0) throw new Error(`apes -- date exited ${r.code}: ${stderr}${r.stderr}`);
      const started = Number(r.stdout.trim()) * 1000;
      if (!Number.isFinite(started)) throw new Error(`date printed ${JSON.stringify(r.stdout)}`);
      if (i >= WARMUP) {
        const s = seriesOf(b.name, kind);
        s.latency.push(started - a.t0);
        s.approverTime.push(a.approverDone);
        s.afterAnswer.push(started - a.t0 - a.approverDone);
        if (b === builds[0])
          for (const m of `${stderr}${r.stderr}`.matchAll(/^apes-timing: (\w+) (\w+) ([\d.]+)$/gm)) {
            const key = `${m[1]} ${m[2]}`;
            phases[key] = [...(phases[key] ?? []), Number(m[3])];
          }
      }
    }
  }

  // The floor of the measure itself: how long /bin/date takes from spawn to the time it prints.
  const dateFloor: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t0 = wallMs();
    const out = spawnSync("/bin/date", ["+%s.%N"], { encoding: "utf8" }).stdout;
    dateFloor.push(Number(out.trim()) * 1000 - t0);
  }

  console.log(
    `\n${SAMPLES} samples per kind and build after ${WARMUP} warm-up, rotating; approved ${PARK_MS} ms after the request waits; TLS IdP on 127.0.0.1\n`,
  );
  for (const b of builds) {
    const cli = seriesOf(b.name, "cli");
    const browser = seriesOf(b.name, "browser");
    console.log(
      `${b.name}:\n` +
        `CLI approval (\`apes grants approve\` started -> the command runs): ${summary(cli.latency)}\n` +
        `  of which \`apes grants approve\` until it exits: ${summary(cli.approverTime)}\n` +
        `  from its exit (the IdP answered before) to the command: ${summary(cli.afterAnswer)}\n` +
        `browser approval (approve clicked: options + passkey + approve -> the command runs): ${summary(browser.latency)}\n` +
        `  of which the page's calls until the approve answer: ${summary(browser.approverTime)}\n` +
        `  from the approve answer to the command: ${summary(browser.afterAnswer)}`,
    );
  }
  for (const [name, xs] of Object.entries(phases)) console.log(`${name}: p50 ${f(pct(xs, 50))} ms`);
  console.log(`floor of the measure (spawn /bin/date -> the time it prints): ${summary(dateFloor)}`);
  console.log(
    `load average at the end: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`,
  );
}
