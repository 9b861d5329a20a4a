// Elevation benchmark: `apes --reason bench -- /bin/true` through the real setuid shim, with a reusable
// approved timed grant, against `sudo -n true` (NOPASSWD) in the same run, plus the split between
// shim, requester, verifier and IdP round trips. Four ways in the same rotation: with the resident
// verifier (`apes verifier serve`) and the caller's warm requester, with either alone, and with the
// one-shot halves only (a second install without a resident verifier; APES_KEEP_WARM=0); and a
// caller's first elevation, which starts its warm requester (the one running is stopped first). As root (installs the shim into a temp prefix, adds
// a user and a sudoers drop-in, both removed at the end; installs sudo with apt when missing).
// Run with the pinned node: `node bench/elevate/run.ts [--rounds=40]` (or `make bench-elevate`).
// Before/after in one run: build the old version, `node bench/elevate/run.ts --install-only=F` (installs
// that build into a temp prefix and describes it in F), build the new one, then `--compare=F` (or `--compare=F1,F2`): the old
// shim and binary are measured interleaved with the new ones (and removed at the end, unless
// --keep-compare).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { canonicalCommand } from "../../cli/elevation/request.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { addUser, api, approveWithProof, loginWithKey, newKey, startIdp } from "../../test/helpers/idp.ts";
import {
  collect,
  ensureUser,
  installIntoTempPrefix,
  makeUserDir,
  spawnAsUser,
  tokenAfterReady,
  VERIFY_USER,
  writeConfig,
} from "../../test/helpers/shim.ts";
import { benchArgs, buildBareSea } from "../common.mjs";
import { earlierInstalls } from "../installs.ts";

const args = benchArgs();
const ROUNDS = Number(args.get("rounds") ?? 40);
const INSTALL_ONLY = args.get("install-only");
const COMPARE = args.get("compare");
// The IdP speaks TLS: the verifier refuses plain http issuers (any local user could serve them).
const WARMUP = 5;
const BENCH_USER = "apes-bench";
const SUDOERS = "/etc/sudoers.d/apes-bench";
const CMD = ["/bin/true"];
const OPTS = ["--approval", "timed", "--duration", "1h", "--reason", "bench"];
const BOTH = "apes -- /bin/true: resident verifier + warm requester";
const NEITHER = "apes -- /bin/true: one-shot halves (no residents)";
const COLD = "apes -- /bin/true: resident verifier, one-shot requester";
const FIRST =
  "apes -- /bin/true: resident verifier, the caller's first elevation (starts its warm requester)";
const FIRST_ROUNDS = Math.max(5, Math.round(ROUNDS / 2));

if (process.getuid?.() !== 0) {
  console.error("bench/elevate needs root (it installs the setuid shim into a temporary prefix)");
  process.exit(77);
}
if (!existsSync("/usr/bin/sudo")) {
  console.error("installing sudo (apt-get) for the comparison...");
  execFileSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", "sudo"], {
    stdio: "inherit",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
}

const work = mkdtempSync(join(tmpdir(), "apes-bench-elevate-"));
chmodSync(work, 0o755); // the bench user reads its HOME and the CA below it
const cleanups: (() => unknown)[] = [() => rmSync(work, { recursive: true, force: true })];
try {
  await main();
} finally {
  for (const c of cleanups.reverse()) await c();
}

async function main() {
  if (INSTALL_ONLY) {
    const { cleanup: _kept, ...described } = await installIntoTempPrefix();
    writeFileSync(INSTALL_ONLY, JSON.stringify(described));
    console.log(
      `installed into ${described.root} (described in ${INSTALL_ONLY}); pass --compare=${INSTALL_ONLY}`,
    );
    return;
  }
  // --compare=F1,F2,...: each an earlier build, named in the tables by its file's base name.
  // --keep-compare: leave the old installs for another run.
  const befores = earlierInstalls(COMPARE, args.has("keep-compare"), cleanups);
  const inst = await installIntoTempPrefix();
  cleanups.push(() => inst.cleanup());
  // The same build again, where no resident verifier runs.
  const oneShot = await installIntoTempPrefix();
  cleanups.push(() => oneShot.cleanup());
  const user = ensureUser(BENCH_USER);
  cleanups.push(() => spawnSync("userdel", [BENCH_USER]));
  const verifier = ensureUser(VERIFY_USER, true);
  writeFileSync(SUDOERS, `${BENCH_USER} ALL=(root) NOPASSWD: /usr/bin/true, /bin/true\n`, { mode: 0o440 });
  cleanups.push(() => rmSync(SUDOERS, { force: true }));

  // TLS IdP on loopback with a throw-away CA, as in `make demo`.
  const ssl = (a: string[]) => execFileSync("openssl", a, { cwd: work, stdio: "ignore" });
  ssl(
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"].concat([
      "-subj",
      "/CN=bench CA",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    ]),
  );
  ssl(
    [
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-subj",
      "/CN=127.0.0.1",
    ].concat(["-keyout", "server.key", "-out", "server.csr"]),
  );
  writeFileSync(join(work, "ext"), "subjectAltName=IP:127.0.0.1\n");
  ssl(
    ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"].concat([
      "-days",
      "1",
      "-extfile",
      "ext",
      "-out",
      "server.pem",
    ]),
  );
  const caPem = join(work, "ca.pem");
  const data = join(work, "idp");
  const human = newKey("alice");
  const agent = newKey("bot");
  await addUser(data, "alice@example.com", { publicKey: human.publicLine });
  await addUser(data, "bot@example.com", {
    agent: true,
    owner: "alice@example.com",
    publicKey: agent.publicLine,
  });
  const idp = await startIdp({
    dataDir: data,
    tls: { cert: join(work, "server.pem"), key: join(work, "server.key") },
    extraArgs: ["--log-level", "warn"],
  });
  cleanups.push(() => idp.stop());
  const caFetch = (await import("undici")).Agent;
  const dispatcher = new caFetch({ connect: { ca: readFileSync(caPem, "utf8") } });
  const tlsFetch = ((input: string, init?: RequestInit) =>
    import("undici").then((u) =>
      u.fetch(input, { ...(init as object), dispatcher } as never),
    )) as unknown as typeof fetch;
  const aliceToken = await loginWithKey(idp.url, "alice@example.com", human.privateKey, tlsFetch);
  const alice = api(idp.url, aliceToken, tlsFetch);
  const grants = (await alice.get("/.well-known/openid-configuration")).body
    .openape_grants_endpoint as string;

  const home = makeUserDir(user, work);
  writeFileSync(join(home, "key.pem"), agent.privateKey.export({ type: "pkcs8", format: "pem" }), {
    mode: 0o600,
  });
  execFileSync("mkdir", ["-p", join(home, ".config", "apes")]);
  writeFileSync(join(home, ".config", "apes", "config.toml"), `ca_file = "${caPem}"\n`);
  execFileSync("chown", ["-R", `${user.uid}:${user.gid}`, home]);
  const env = { HOME: home, PATH: "/usr/bin:/bin", LANG: "C.UTF-8" };
  const cold = { ...env, APES_KEEP_WARM: "0" }; // no warm requester: each elevation starts its own
  const login = await collect(
    spawnAsUser(
      user,
      [inst.shim, "login", "bot@example.com", "--key", join(home, "key.pem"), "--idp", idp.url],
      { env },
    ),
  );
  if (login.code !== 0) throw new Error(`login failed: ${login.stderr}`);
  const policy = `issuers = ["${idp.issuer}"]\napprovers = ["alice@example.com"]\nhost = "${hostname()}"\nca_pem = '''\n${readFileSync(caPem, "utf8").trim()}\n'''\n[users]\n${BENCH_USER} = ["bot@example.com"]\n`;
  writeConfig(inst, policy);
  writeConfig(oneShot, policy);
  for (const b of befores) writeConfig(b, policy);
  // The resident verifier of `inst`, started as root as the unit's ExecStart (it becomes _apes).
  const resident = spawn(inst.exec, ["verifier", "serve", "--idle", "1h"], {
    cwd: inst.cacheDir,
    env: { PATH: "/usr/bin:/bin", HOME: inst.cacheDir, LANG: "C.UTF-8", APES_VERIFIER: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  cleanups.push(() => resident.kill("SIGKILL"));
  await new Promise<void>((resolve, reject) => {
    let log = "";
    resident.stderr!.on("data", (c: Buffer) => {
      log += c.toString();
      if (log.includes("serving on")) resolve();
    });
    resident.once("exit", (code) => reject(new Error(`apes verifier serve exited (${code}): ${log}`)));
  });

  // The reusable timed grant: the first elevation asks, alice approves over HTTP.
  const first = spawnAsUser(user, [inst.shim, ...OPTS, "--", ...CMD], { env });
  const firstDone = collect(first);
  let id: string | undefined;
  for (let i = 0; i < 200 && !id; i++) {
    const list = await alice.get(`${grants}?status=pending`);
    id = list.body?.data?.[0]?.id;
    if (!id) await new Promise((r) => setTimeout(r, 50));
  }
  if (!id) throw new Error("no pending grant");
  const approved = await approveWithProof(idp.url, aliceToken, id, human.privateKey, {}, tlsFetch);
  if (approved.status !== 200)
    throw new Error(`approve: ${approved.status} ${JSON.stringify(approved.body)}`);
  const r0 = await firstDone;
  if (r0.code !== 0) throw new Error(`first elevation failed: ${r0.stderr}`);

  const asUser = ["setpriv", "--reuid", String(user.uid), "--regid", String(user.gid), "--init-groups", "--"];
  const run = (argv: string[], opts: Parameters<typeof spawnSync>[2] = {}) => {
    const t = performance.now();
    const r = spawnSync(argv[0]!, argv.slice(1), { cwd: "/", ...opts });
    const ms = performance.now() - t;
    if (r.status !== 0) throw new Error(`${argv.join(" ")} failed (${r.status}): ${r.stderr}`);
    return { ms, r };
  };
  // One AuthZ-JWT of the timed grant for the verifier-alone runs (timed grants consume as "valid").
  const result = run([...asUser, inst.exec, "__request", "--result-fd", "3", ...OPTS, "--", ...CMD], {
    env,
    stdio: ["ignore", "ignore", "pipe", "pipe"],
  }).r.output[3]!.toString();
  const tok = tokenAfterReady(result);
  // The grant holds the command as the requester canonicalised it (/bin/true -> /usr/bin/true on merged /usr).
  const granted = canonicalCommand(CMD);
  const requestLine = `${JSON.stringify({ jwt: tok, argv: granted, cmd_hash: cmdHash(granted), user: BENCH_USER, uid: user.uid, run_as: "root" })}\n`;
  const verifierEnv = { PATH: "/usr/bin:/bin", HOME: inst.cacheDir, LANG: "C.UTF-8", APES_VERIFIER: "1" };
  const asVerifier = [
    "setpriv",
    "--reuid",
    String(verifier.uid),
    "--regid",
    String(verifier.gid),
    "--clear-groups",
    "--",
  ];

  // One build's requester (`__request` on fd 3) and verifier (`__verify`, the policy on fd 3) alone.
  type Install = { exec: string; config: string; cacheDir: string };
  const requesterRun = (i: Install, extraEnv: Record<string, string> = {}) =>
    run([...asUser, i.exec, "__request", "--result-fd", "3", ...OPTS, "--", ...CMD], {
      env: { ...env, ...extraEnv },
      stdio: ["ignore", "ignore", "pipe", "pipe"],
    });
  const verifierRun = (i: Install, line: string) => {
    const fd = openSync(i.config, "r");
    try {
      return run([...asVerifier, i.exec, "__verify", "--config-fd", "3"], {
        env: verifierEnv,
        cwd: i.cacheDir,
        input: line,
        stdio: ["pipe", "pipe", "pipe", fd],
      });
    } finally {
      closeSync(fd);
    }
  };

  // A caller's first elevation: none of its warm requesters runs yet, so its one-shot requester asks
  // and starts one (detached) on the way. Stopped before each such run, not timed; afterwards the
  // new one is waited for, so the next case that wants it finds it serving.
  const warmOf = `${inst.exec.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} __request --serve `;
  const warmSockets = () =>
    (spawnSync("pgrep", ["-a", "-u", String(user.uid), "-f", warmOf], { encoding: "utf8" }).stdout ?? "")
      .split("\n")
      .map((line) => /--serve (\S+)/.exec(line)?.[1])
      .filter((p): p is string => p !== undefined);
  const pause = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  const stopWarmRequester = () => {
    const sockets = warmSockets();
    spawnSync("pkill", ["-KILL", "-u", String(user.uid), "-f", warmOf]);
    for (let i = 0; i < 200 && warmSockets().length > 0; i++) pause(10);
    for (const socket of warmSockets()) throw new Error(`warm requester still serving ${socket}`);
    // As after its idle end (which removes it): no socket, so the next one is seen once it listens.
    for (const socket of sockets) rmSync(socket, { force: true });
  };
  const awaitWarmRequester = () => {
    for (let i = 0; i < 300; i++) {
      const [socket] = warmSockets();
      if (socket && existsSync(socket)) return;
      pause(10);
    }
    throw new Error("the first elevation started no warm requester");
  };

  // The runtime's floor: a one-line single executable built like dist/apes (bench/common.mjs).
  const bare = buildBareSea(work);
  const cases: Record<string, () => number> = {
    "setpriv /bin/true (harness floor)": () => run([...asUser, "/bin/true"], { env }).ms,
    "bare single executable (runtime floor)": () => run([...asUser, bare], { env }).ms,
    "sudo -n true": () => run([...asUser, "/usr/bin/sudo", "-n", "true"], { env }).ms,
    [BOTH]: () => run([...asUser, inst.shim, ...OPTS, "--", ...CMD], { env }).ms,
    [COLD]: () => run([...asUser, inst.shim, ...OPTS, "--", ...CMD], { env: cold }).ms,
    "apes -- /bin/true: warm requester, one-shot verifier": () =>
      run([...asUser, oneShot.shim, ...OPTS, "--", ...CMD], { env }).ms,
    [NEITHER]: () => run([...asUser, oneShot.shim, ...OPTS, "--", ...CMD], { env: cold }).ms,
    ...Object.fromEntries(
      befores.map((b) => [
        `before (${b.name}): apes -- /bin/true`,
        () => run([...asUser, b.shim, ...OPTS, "--", ...CMD], { env }).ms,
      ]),
    ),
    // --compare-requester: each earlier build's requester and verifier alone too (a smaller change shows there).
    ...Object.fromEntries(
      befores
        .filter(() => args.has("compare-requester"))
        .flatMap((b) => [
          [`before (${b.name}): requester alone`, () => requesterRun(b).ms],
          [`before (${b.name}): verifier alone`, () => verifierRun(b, requestLine).ms],
        ]),
    ),
    "requester alone (__request)": () => requesterRun(inst).ms,
    "verifier alone (__verify)": () => verifierRun(inst, requestLine).ms,
  };
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
  const names = Object.keys(cases);
  for (let round = 0; round < WARMUP + ROUNDS; round++) {
    // Rotate the order so no case always runs right after another.
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + round) % names.length]!;
      const ms = cases[name]!();
      if (round >= WARMUP) times[name]!.push(ms);
    }
  }

  // A caller's first elevation against the same one-shot requester that starts none (APES_KEEP_WARM=0),
  // alternating, after the rotation: each first elevation leaves a fresh (cold) warm requester behind,
  // which would slow the warm cases above.
  const firsts: Record<string, number[]> = { [FIRST]: [], [COLD]: [] };
  for (let i = 0; i < FIRST_ROUNDS; i++) {
    stopWarmRequester();
    firsts[FIRST]!.push(run([...asUser, inst.shim, ...OPTS, "--", ...CMD], { env }).ms);
    awaitWarmRequester();
    firsts[COLD]!.push(run([...asUser, inst.shim, ...OPTS, "--", ...CMD], { env: cold }).ms);
  }

  // Phase split from the programs' own timing lines (median over 15 runs each); with --compare, each
  // earlier build's too, interleaved with this one's ("before (name): requester start" ...).
  const phases: Record<string, number[]> = {};
  const timed = requestLine.replace(/}\n$/, ',"timing":true}\n');
  const builds: [string, Install][] = [
    ["", inst],
    ...befores.map((b) => [`before (${b.name}): `, b] as [string, Install]),
  ];
  for (let i = 0; i < 15; i++) {
    for (const [label, b] of builds) {
      const req = requesterRun(b, { APES_TIMING: "1" }).r.stderr!.toString();
      const ver = verifierRun(b, timed).r.stderr!.toString();
      for (const m of `${req}\n${ver}`.matchAll(/^apes-timing: (\w+) (\w+) ([\d.]+)$/gm)) {
        const key = `${label}${m[1]} ${m[2]}`;
        phases[key] = [...(phases[key] ?? []), Number(m[3])];
      }
    }
  }

  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  const pct = (xs: number[], p: number) =>
    [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
  const f = (x: number) => x.toFixed(1);
  console.log(
    `\n${ROUNDS} rounds after ${WARMUP} warm-up, interleaved; TLS IdP on 127.0.0.1; wall time of spawnSync\n`,
  );
  console.log("| case | median | p10 | p90 |\n| --- | ---: | ---: | ---: |");
  for (const [name, xs] of Object.entries(times)) {
    console.log(`| ${name} | ${f(median(xs))} ms | ${f(pct(xs, 0.1))} | ${f(pct(xs, 0.9))} |`);
  }
  console.log('\n| phase (from APES_TIMING / "timing":true) | median |\n| --- | ---: |');
  for (const [name, xs] of Object.entries(phases)) console.log(`| ${name} | ${f(median(xs))} ms |`);
  const total = median(times[NEITHER]!);
  const reqMs = median(times["requester alone (__request)"]!);
  const verMs = median(times["verifier alone (__verify)"]!);
  const floor = median(times["setpriv /bin/true (harness floor)"]!);
  const runtime = median(times["bare single executable (runtime floor)"]!) - floor;
  const m = (k: string) => median(phases[k] ?? [Number.NaN]);
  console.log(
    "\n| process | runtime floor | start-up over the floor | own work | exit and rest |\n| --- | ---: | ---: | ---: | ---: |",
  );
  for (const [who, wall] of [
    ["requester", reqMs - floor],
    ["verifier", verMs - floor],
  ] as const) {
    const start = m(`${who} start`);
    const own = m(`${who} total`);
    console.log(
      `| ${who} | ${f(runtime)} ms | ${f(start - runtime)} ms | ${f(own)} ms | ${f(wall - start - own)} ms |`,
    );
  }
  // The shim starts the verifier at the requester's ready marker, so the two processes overlap: the rest can be negative.
  console.log(
    `\nsplit of the median elevation (${f(total)} ms): requester process ${f(reqMs - floor)} ms, verifier process ${f(verMs - floor)} ms, ` +
      `shim + exec of the command + harness - overlap of the two ${f(total - (reqMs - floor) - (verMs - floor))} ms (harness floor ${f(floor)} ms)`,
  );
  const sudo = median(times["sudo -n true"]!);
  for (const name of Object.keys(times).filter((k) => k.startsWith("apes -- /bin/true"))) {
    const ms = median(times[name]!);
    console.log(`${name}: ${f(ms)} ms = ${f(ms / sudo)}x sudo -n true (${f(sudo)} ms)`);
  }
  const firstMs = median(firsts[FIRST]!);
  const coldFirst = median(firsts[COLD]!);
  console.log(
    `${FIRST}: ${f(firstMs)} ms = ${f(firstMs / sudo)}x sudo -n true; against the one-shot requester in the same ${FIRST_ROUNDS} alternating rounds (${f(coldFirst)} ms): +${f(firstMs - coldFirst)} ms for starting the warm requester`,
  );
  for (const b of befores) {
    const old = median(times[`before (${b.name}): apes -- /bin/true`]!);
    console.log(
      `before (${b.name}): ${f(old)} ms = ${f(old / sudo)}x sudo -n true; after/before: one-shot halves ${(total / old).toFixed(2)}, both residents ${(median(times[BOTH]!) / old).toFixed(2)}`,
    );
  }
  console.log(
    `load average at the end: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}`,
  );
}
