import { type ChildProcess, execFile, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createConnection } from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  approveWithProof,
  fetchTrusting,
  type IdpHandle,
  loginWithKey,
  loopbackCert,
  newKey,
  startIdp,
  trustCaIn,
} from "../helpers/idp.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  ensureUser,
  installIntoTempPrefix,
  makeUserDir,
  REPO,
  readAudit,
  runAsUser,
  type ShimInstall,
  spawnAsUser,
  type UnixUser,
  VERIFY_USER,
  writeConfig,
} from "../helpers/shim.ts";

/**
 * The resident verifier (`apes verifier serve`, docs/elevation.md section 3) with the REAL setuid
 * shim, a REAL non-root caller and the real IdP over TLS: started as its systemd unit
 * (packaging/systemd/apes-verifier.service.in, installed by `make install-verifier-service`) would
 * start it, it answers the shim's elevations with every check of the one-shot verifier; the shim
 * falls back to a one-shot verifier only while nothing was sent, refuses a hostile peer's verdict
 * for another command, and ignores a socket that is not _apes's alone.
 */

const execFileP = promisify(execFile);
const ALICE = "alice@example.com";
const BOT = "bot@example.com";
const CMD = ["/bin/sh", "-c", "echo ran-as-$(id -u)"];
const OPTS = ["--approval", "timed", "--duration", "1h", "--reason", "resident test"];

let inst: ShimInstall;
let user: UnixUser;
let verifierUser: UnixUser;
let idp: IdpHandle;
let work: string;
let agentHome: string;
let caPem: string;
let unit: { exec: string[]; env: Record<string, string>; cwd: string; user: string };
const residents = new Set<ChildProcess>();
let aliceApi: ReturnType<typeof api>;
let grants: string;
let botKey: string;

function policy(extra: { approvers?: string[] } = {}): string {
  return [
    `issuers = ${JSON.stringify([idp.issuer])}`,
    `approvers = ${JSON.stringify(extra.approvers ?? [ALICE])}`,
    `host = "${hostname()}"`,
    `ca_pem = '''\n${readFileSync(caPem, "utf8").trim()}\n'''`,
    `run_as = ["root"]`,
    "[users]",
    `"${user.name}" = ${JSON.stringify([BOT])}`,
    "",
  ].join("\n");
}

const userEnv = () => ({ HOME: agentHome, PATH: "/usr/bin:/bin", LANG: "C.UTF-8" });

async function until(probe: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The resident as systemd starts the unit: its user, Environment=, WorkingDirectory=, ExecStart=. */
async function startResident(extraArgs: string[] = []): Promise<{ child: ChildProcess; log: () => string }> {
  const [file, ...args] = unit.exec;
  const child = spawnAsUser(unit.user, [file!, ...args, ...extraArgs], { env: unit.env, cwd: unit.cwd });
  residents.add(child);
  let log = "";
  child.stderr!.on("data", (c: Buffer) => {
    log += c.toString();
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the resident did not start: ${log}`)), 20_000);
    child.stderr!.on("data", () => {
      if (log.includes("serving on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the resident exited (${code}): ${log}`));
    });
  });
  return { child, log: () => log };
}

async function stopResident(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }
  residents.delete(child);
}

/** Runs `apes [OPTS] -- CMD` as the caller; the last audit line of it. */
async function elevate(cmd = CMD, options: { env?: Record<string, string>; opts?: string[] } = {}) {
  const before = readAudit(inst).length;
  const argv = [inst.shim, ...(options.opts ?? OPTS), "--", ...cmd];
  const r = await collect(spawnAsUser(user, argv, { env: { ...userEnv(), ...options.env } }), {
    timeoutMs: 30_000,
  });
  return { ...r, audit: readAudit(inst).slice(before).at(-1) as AuditLine | undefined };
}

/** A stand-in peer on the verifier's socket, as `who`: answers `answer` to the first request (or closes). */
async function hostilePeer(
  who: UnixUser,
  answer: string | undefined,
  greeting = "ready\n",
): Promise<{ stop(): Promise<void>; got(): string }> {
  const dir = mkdtempSync(join(work, "peer-"));
  chownSync(dir, who.uid, who.gid); // it writes what it got there
  const out = join(dir, "got");
  const script = join(dir, "peer.mjs");
  writeFileSync(
    script,
    `import { createServer } from "node:net";
import { writeFileSync } from "node:fs";
const [path, out, answer, greeting] = process.argv.slice(2);
const server = createServer((s) => {
  s.write(greeting);
  let got = "";
  s.on("data", (d) => {
    got += d.toString();
    // the policy, then the request line: answer after the request line's newline
    const m = /^policy (\\d+)\\n/.exec(got);
    if (!m) return;
    const rest = got.slice(m[0].length + Number(m[1]));
    if (!rest.includes("\\n")) return;
    writeFileSync(out, rest);
    if (answer === "-") s.destroy(); else s.end(answer);
  });
  s.on("error", () => {});
});
server.listen(path, () => console.log("listening"));
`,
    { mode: 0o644 },
  );
  const sock = join(inst.cacheDir, "verifier.sock");
  rmSync(sock, { force: true }); // a killed resident's file
  const child = spawnAsUser(who, [process.execPath, script, sock, out, answer ?? "-", greeting], {
    env: { PATH: "/usr/bin:/bin" },
  });
  residents.add(child);
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (c: Buffer) => c.toString().includes("listening") && resolve());
    child.once("exit", (code) => reject(new Error(`the peer exited (${code}): ${stderr}`)));
  });
  if (who.uid !== verifierUser.uid) chownSync(sock, verifierUser.uid, verifierUser.gid);
  return {
    got: () => (existsSync(out) ? readFileSync(out, "utf8") : ""),
    stop: async () => {
      await stopResident(child);
      rmSync(sock, { force: true });
    },
  };
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the shim e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  verifierUser = ensureUser(VERIFY_USER, true);
  work = mkdtempSync(join(tmpdir(), "apes-verifier-resident-"));
  chmodSync(work, 0o755);

  // The unit as `make install-verifier-service` writes it for this prefix.
  await execFileP(
    "make",
    [
      "-s",
      "install-verifier-service",
      `PREFIX=${inst.prefix}`,
      `SYSCONFDIR=${inst.etc}`,
      `LOCALSTATEDIR=${inst.var}`,
    ],
    { cwd: REPO },
  );
  const text = readFileSync(join(inst.prefix, "lib", "systemd", "system", "apes-verifier.service"), "utf8");
  const values = (key: string) =>
    [...text.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].map((m) => m[1]!.trim());
  unit = {
    exec: values("ExecStart")[0]!.split(/\s+/),
    env: Object.fromEntries(
      values("Environment").map((v) => v.split(/=(.*)/s).slice(0, 2) as [string, string]),
    ),
    cwd: values("WorkingDirectory")[0]!,
    user: values("User")[0]!,
  };

  const tls = loopbackCert(work);
  caPem = tls.cert;
  chmodSync(caPem, 0o644);
  const data = join(work, "idp");
  const alice = newKey(ALICE);
  const bot = newKey(BOT);
  await addUser(data, ALICE, { publicKey: alice.publicLine });
  await addUser(data, BOT, { agent: true, owner: ALICE, publicKey: bot.publicLine });
  idp = await startIdp({ dataDir: data, tls });
  const tlsFetch = fetchTrusting(caPem);
  const aliceToken = await loginWithKey(idp.url, ALICE, alice.privateKey, tlsFetch);
  aliceApi = api(idp.url, aliceToken, tlsFetch);
  grants = (await aliceApi.get("/.well-known/openid-configuration")).body.openape_grants_endpoint as string;

  agentHome = makeUserDir(user, work);
  trustCaIn(agentHome, caPem, user);
  writeFileSync(
    join(agentHome, "key.pem"),
    bot.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    {
      mode: 0o600,
    },
  );
  botKey = join(agentHome, "key.pem");
  chownSync(botKey, user.uid, user.gid);
  const login = await collect(
    spawnAsUser(user, [inst.shim, "login", BOT, "--key", join(agentHome, "key.pem"), "--idp", idp.url], {
      env: userEnv(),
    }),
  );
  expect(login.code, login.stderr).toBe(0);
  writeConfig(inst, policy());

  // The timed grant every elevation below reuses: the first one asks, alice approves.
  const first = collect(spawnAsUser(user, [inst.shim, ...OPTS, "--", ...CMD], { env: userEnv() }), {
    timeoutMs: 30_000,
  });
  let id: string | undefined;
  for (let i = 0; i < 300 && !id; i++) {
    id = (await aliceApi.get(`${grants}?status=pending`)).body?.data?.[0]?.id;
    if (!id) await new Promise((r) => setTimeout(r, 50));
  }
  expect(id).toBeDefined();
  const approved = await approveWithProof(idp.url, aliceToken, id!, alice.privateKey, {}, tlsFetch);
  expect(approved.status).toBe(200);
  const r0 = await first;
  expect(r0.code, r0.stderr).toBe(0);
}, 180_000);

afterEach(() => {
  writeConfig(inst, policy());
  chmodSync(inst.cacheDir, 0o700);
});

afterAll(async () => {
  for (const c of [...residents]) await stopResident(c);
  for (const w of warmRequesters()) process.kill(w.pid, "SIGKILL");
  await idp?.stop();
  await inst?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("the resident verifier", () => {
  it("runs as its unit says and answers an elevation: the command runs, the verdict is its own", async () => {
    expect(unit.user).toBe(VERIFY_USER);
    expect(unit.exec.slice(1, 3)).toEqual(["verifier", "serve"]);
    const r = await startResident();
    try {
      const e = await elevate();
      expect(e.code, e.stderr).toBe(0);
      expect(e.stdout).toContain("ran-as-0");
      expect(e.audit?.decision).toBe("allow");
      // Its own log line for this verdict: the elevation did not go to a one-shot verifier.
      expect(r.log()).toMatch(/apes verifier: allow grant \S+/);
    } finally {
      await stopResident(r.child);
    }
  });

  it("reads the policy the shim sends with each request: an edit counts at the next elevation", async () => {
    const r = await startResident();
    try {
      writeConfig(inst, policy({ approvers: ["carol@example.com"] }));
      const denied = await elevate();
      expect(denied.code).toBe(77);
      expect(denied.audit).toMatchObject({ decision: "deny", reason: "approver_not_allowed" });
      expect(denied.stdout).not.toContain("ran-as");
      expect(denied.stderr).toContain("not allowed (approver_not_allowed)"); // its diagnostics, forwarded
      writeConfig(inst, "issuers = [");
      const broken = await elevate();
      expect(broken.code).toBe(78);
      expect(broken.audit).toMatchObject({ decision: "deny", reason: "config_invalid" });
      writeConfig(inst, policy());
      expect((await elevate()).code).toBe(0);
      expect(r.log().match(/apes verifier: (allow|deny)/g)?.length).toBe(3);
    } finally {
      await stopResident(r.child);
    }
  });

  it("is not needed: once it is gone, a one-shot verifier answers", async () => {
    const r = await startResident();
    await stopResident(r.child); // killed: its socket file stays, nobody listens
    expect(existsSync(join(inst.cacheDir, "verifier.sock"))).toBe(true);
    const e = await elevate();
    expect(e.code, e.stderr).toBe(0);
    expect(e.stdout).toContain("ran-as-0");
    // The next start replaces the stale socket file.
    const again = await startResident();
    expect((await elevate()).code).toBe(0);
    expect(again.log()).toMatch(/apes verifier: allow/);
    await stopResident(again.child);
  });

  it("a peer's allow for another command is refused: verdict_mismatch, nothing runs", async () => {
    const forged = `${JSON.stringify({ ok: true, grant_id: "g", cmd_hash: "SHA-256:forged", run_as: "root", sub: BOT, decided_by: ALICE, issuer: "x", grant_type: "timed", jti: "j" })}\nexit 0\n`;
    const peer = await hostilePeer(verifierUser, forged);
    try {
      const e = await elevate();
      expect(peer.got(), JSON.stringify(e)).toContain('"cmd_hash"'); // it did get the request
      expect(e.code).toBe(77);
      expect(e.audit).toMatchObject({ decision: "deny", reason: "verdict_mismatch" });
      expect(e.stdout).not.toContain("ran-as");
    } finally {
      await peer.stop();
    }
  });

  it("a peer that takes the request and closes, or answers garbage, is a denial: never a second verifier", async () => {
    for (const answer of [undefined, "not a verdict\n", `${JSON.stringify({ ok: true })}\nexit 0`]) {
      const peer = await hostilePeer(verifierUser, answer);
      try {
        const e = await elevate();
        expect(peer.got()).toContain('"jwt"');
        expect(e.code).toBe(77);
        expect(e.audit).toMatchObject({ decision: "deny", reason: "verifier_failed" });
        expect(e.stdout).not.toContain("ran-as");
      } finally {
        await peer.stop();
      }
    }
  });

  it("a resident that greets busy gets nothing: a one-shot verifier answers", async () => {
    const peer = await hostilePeer(verifierUser, "x\nexit 0\n", "busy\n");
    try {
      const e = await elevate();
      expect(e.code, e.stderr).toBe(0);
      expect(e.stdout).toContain("ran-as-0");
      expect(peer.got()).toBe("");
    } finally {
      await peer.stop();
    }
  });

  it("a socket that is not _apes's alone is not used: another owner's peer, or a directory open to others", async () => {
    const root = { name: "root", uid: 0, gid: 0 };
    const rootPeer = await hostilePeer(root, "x\nexit 0\n"); // the socket file chowned to _apes; the peer is root
    try {
      const e = await elevate();
      expect(e.code, e.stderr).toBe(0);
      expect(e.stdout).toContain("ran-as-0");
      expect(rootPeer.got()).toBe("");
    } finally {
      await rootPeer.stop();
    }
    const peer = await hostilePeer(verifierUser, "x\nexit 0\n");
    try {
      chmodSync(inst.cacheDir, 0o750);
      const e = await elevate();
      expect(e.code, e.stderr).toBe(0);
      expect(peer.got()).toBe("");
    } finally {
      chmodSync(inst.cacheDir, 0o700);
      await peer.stop();
    }
  });

  it("refuses to run as anyone but _apes (root becomes _apes first), and beside a live one", async () => {
    const [file, ...args] = unit.exec;
    const asCaller = await runAsUser(user, [file!, ...args], { env: userEnv() });
    expect(asCaller.code).toBe(77);
    expect(asCaller.stderr).toContain("runs as _apes only");
    const asRoot = spawn(file!, [...args, "--idle", "1s"], {
      env: unit.env,
      cwd: unit.cwd,
      stdio: ["ignore", "ignore", "pipe"],
    });
    residents.add(asRoot);
    let rootLog = "";
    asRoot.stderr!.on("data", (c: Buffer) => {
      rootLog += c.toString();
    });
    await until(() => rootLog.includes("serving on"));
    const status = readFileSync(`/proc/${asRoot.pid}/status`, "utf8");
    const id = verifierUser.uid;
    expect(status).toMatch(new RegExp(`^Uid:\\s+${id}\\s+${id}\\s+${id}\\s+${id}$`, "m"));
    expect(status).toMatch(/^Groups:\s*$/m);
    await new Promise((r) => asRoot.once("exit", r)); // idle after 1 s
    residents.delete(asRoot);
    const r = await startResident();
    try {
      const second = await runAsUser(unit.user, [file!, ...args], { env: unit.env, cwd: unit.cwd });
      expect(second.code).toBe(75);
      expect(second.stderr).toContain("already answers");
    } finally {
      await stopResident(r.child);
    }
  });

  it("ends by itself when idle and when its socket is removed", async () => {
    const idle = await startResident(["--idle", "1s"]);
    const code = await new Promise((r) => idle.child.once("exit", r));
    expect(code).toBe(0);
    expect(idle.log()).toContain("stopped (idle)");
    residents.delete(idle.child);
    const r = await startResident();
    rmSync(join(inst.cacheDir, "verifier.sock"));
    expect(await new Promise((res) => r.child.once("exit", res))).toBe(0);
    expect(r.log()).toContain("stopped (socket gone)");
    residents.delete(r.child);
  });
});

/** The caller's warm requesters of this install: `__request --serve PATH` processes of its uid. */
function warmRequesters(): { pid: number; path: string }[] {
  const found: { pid: number; path: string }[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0");
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${name}/status`, "utf8"))?.[1]);
      if (uid === user.uid && argv[0] === inst.exec && argv[1] === "__request" && argv[2] === "--serve")
        found.push({ pid: Number(name), path: argv[3]! });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function untilAsync<T>(probe: () => Promise<T | undefined> | T | undefined, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The one warm requester for the default environment, started by an elevation if there is none. */
async function warmOne(): Promise<{ pid: number; path: string }> {
  if (warmRequesters().length === 0) expect((await elevate()).code).toBe(0);
  // Started is not yet listening (a killed one's socket file may still be there): until it answers,
  // an elevation would not reach it.
  const answers = (path: string) =>
    new Promise<boolean>((resolve) => {
      const c = createConnection(path);
      c.once("connect", () => {
        c.destroy();
        resolve(true);
      });
      c.once("error", () => resolve(false));
    });
  return untilAsync(async () => {
    const all = warmRequesters();
    return all.length === 1 && (await answers(all[0]!.path)) ? all[0] : undefined;
  });
}

async function killWarm(): Promise<void> {
  for (const w of warmRequesters()) process.kill(w.pid, "SIGKILL");
  await untilAsync(() => (warmRequesters().length === 0 ? true : undefined));
}

/** Grants for this command (as given, or with its program's directory made canonical), as alice sees them. */
async function grantsFor(argv: string[]): Promise<{ id: string; status: string }[]> {
  const res = await aliceApi.get(`${grants}?limit=100`);
  const names = [
    JSON.stringify(argv),
    JSON.stringify([argv[0]!.replace(/^\/bin\//, "/usr/bin/"), ...argv.slice(1)]),
  ];
  return (res.body?.data ?? []).filter((g: { request: { command?: string[] } }) =>
    names.includes(JSON.stringify(g.request.command)),
  );
}

/** The shim's requester child: the process whose parent is the shim (pid), running as the caller (not the early verifier, _apes's). */
function childOf(pid: number): number | undefined {
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1]);
      if (uid === user.uid && stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1] === String(pid))
        return Number(p);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

describe("the caller's warm requester", () => {
  afterEach(async () => {
    await killWarm();
  });

  it("is started by an elevation and serves the next ones: no requester process, its lines reach the caller", async () => {
    await killWarm();
    const first = await elevate(CMD, { opts: ["--debug", ...OPTS] });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).not.toContain("served by the warm requester");
    const warm = await warmOne();
    expect(warm.path).toMatch(new RegExp(`^/tmp/apes-${user.uid}/requester-[0-9a-f]{32}\\.sock$`));
    expect(statSync(join(warm.path, "..")).mode & 0o777).toBe(0o700);
    const next = await elevate(CMD, { opts: ["--debug", ...OPTS] });
    expect(next.code, next.stderr).toBe(0);
    expect(next.stdout).toContain("ran-as-0");
    expect(next.stderr).toContain(`served by the warm requester (pid ${warm.pid})`);
    expect(next.stderr).toMatch(/apes: using timed grant \S+, approved by alice@example.com/);
    expect(next.audit?.decision).toBe("allow");
    expect(warmRequesters()).toHaveLength(1); // still one: it served, nobody started another
  });

  it("pending (--no-wait): exit 75, the grant id on stdout, audited pending", async () => {
    await warmOne();
    const cmd = ["/bin/echo", `pending-${Date.now()}`];
    const e = await elevate(cmd, { opts: ["--debug", "--no-wait", "--reason", "pending test"] });
    expect(e.stderr).toContain("served by the warm requester");
    expect(e.code).toBe(75);
    expect(e.audit?.decision).toBe("pending");
    const [g] = await grantsFor(cmd);
    expect(g?.status).toBe("pending");
    expect(e.stdout.trim()).toBe(g!.id);
  });

  it("an interrupted elevation (SIGINT to the requester's side, as Ctrl-C sends it) ends with 130 and revokes its grant", async () => {
    await warmOne();
    const cmd = ["/bin/echo", `interrupted-${Date.now()}`];
    const child = spawnAsUser(user, [inst.shim, "--reason", "ctrl-c", "--", ...cmd], { env: userEnv() });
    const done = collect(child, { timeoutMs: 30_000 });
    await untilAsync(async () =>
      (await grantsFor(cmd)).some((g) => g.status === "pending") ? true : undefined,
    );
    const relay = await untilAsync(() => childOf(child.pid!));
    process.kill(relay, "SIGINT");
    const r = await done;
    expect(r.code).toBe(130);
    expect(r.stdout).not.toContain("interrupted-");
    // The child shut its side; the warm requester revoked the grant, said so through it, ended 130.
    expect(r.stderr).toMatch(/interrupted; .*cancel/);
    expect(readAudit(inst).at(-1)).toMatchObject({ decision: "deny" });
    await untilAsync(async () =>
      (await grantsFor(cmd)).some((g) => g.status === "revoked") ? true : undefined,
    );
  });

  it("another value of an APES_* variable gets a warm requester of its own", async () => {
    const warm = await warmOne();
    const other = await elevate(CMD, { env: { APES_POLL_INTERVAL_MS: "1500" }, opts: ["--debug", ...OPTS] });
    expect(other.code, other.stderr).toBe(0);
    expect(other.stderr).not.toContain("served by the warm requester");
    const both = await untilAsync(() => (warmRequesters().length === 2 ? warmRequesters() : undefined));
    expect(new Set(both.map((w) => w.path)).size).toBe(2);
    expect(both.map((w) => w.pid)).toContain(warm.pid);
  });

  it("APES_KEEP_WARM=0 starts none and uses none", async () => {
    await killWarm();
    const e = await elevate(CMD, { env: { APES_KEEP_WARM: "0" } });
    expect(e.code, e.stderr).toBe(0);
    await new Promise((r) => setTimeout(r, 500));
    expect(warmRequesters()).toHaveLength(0);
    await warmOne();
    const off = await elevate(CMD, { env: { APES_KEEP_WARM: "0" }, opts: ["--debug", ...OPTS] });
    expect(off.code).toBe(0);
    expect(off.stderr).not.toContain("served by the warm requester");
  });

  it("reads the session each time: after logout the next elevation is refused, after login it works again", async () => {
    await warmOne();
    const out = await collect(spawnAsUser(user, [inst.shim, "logout"], { env: userEnv() }));
    expect(out.code, out.stderr).toBe(0);
    const refused = await elevate(CMD, { opts: ["--debug", ...OPTS] });
    expect(refused.stderr).toContain("served by the warm requester");
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/not logged in|apes login/);
    expect(refused.stdout).not.toContain("ran-as");
    const back = await collect(
      spawnAsUser(user, [inst.shim, "login", BOT, "--key", botKey, "--idp", idp.url], { env: userEnv() }),
    );
    expect(back.code, back.stderr).toBe(0);
    expect((await elevate()).code).toBe(0);
  });

  it("one killed mid-request is a denial: nothing runs, and no second requester is started", async () => {
    const warm = await warmOne();
    const cmd = ["/bin/echo", `killed-${Date.now()}`];
    const before = readAudit(inst).length;
    const child = spawnAsUser(user, [inst.shim, "--reason", "killed", "--", ...cmd], { env: userEnv() });
    const done = collect(child, { timeoutMs: 30_000 });
    await untilAsync(async () => ((await grantsFor(cmd)).length > 0 ? true : undefined));
    process.kill(warm.pid, "SIGKILL");
    const r = await done;
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain("killed-");
    expect(readAudit(inst).slice(before).at(-1)).toMatchObject({
      decision: "deny",
      reason: "requester_failed",
    });
  });

  it("a socket that is not the caller's alone is not used: a directory open to others, or a peer of another uid", async () => {
    const warm = await warmOne();
    const dir = join(warm.path, "..");
    chmodSync(dir, 0o750);
    try {
      const e = await elevate(CMD, { opts: ["--debug", ...OPTS] });
      expect(e.code, e.stderr).toBe(0);
      expect(e.stderr).not.toContain("served by the warm requester");
    } finally {
      chmodSync(dir, 0o700);
    }
    // Root listens on the caller's socket path, the file chowned to the caller: the peer check.
    await killWarm();
    rmSync(warm.path, { force: true });
    const { createServer } = await import("node:net");
    let got = "";
    const squatter = createServer((s) => {
      s.write("ready\n"); // greets like a warm requester: only the peer check keeps it out
      s.on("error", () => {}); // the child hangs up on it (unread greeting: a reset)
      s.on("data", (d) => {
        got += d.toString();
      });
    });
    await new Promise<void>((r) => squatter.listen(warm.path, r));
    chownSync(warm.path, user.uid, user.gid);
    try {
      const e = await elevate(CMD, { env: {}, opts: ["--debug", ...OPTS] });
      expect(e.code, e.stderr).toBe(0);
      expect(e.stderr).not.toContain("served by the warm requester");
      expect(got).toBe("");
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  it("ends when its socket is removed", async () => {
    const warm = await warmOne();
    rmSync(warm.path);
    await untilAsync(() => (warmRequesters().some((w) => w.pid === warm.pid) ? undefined : true), 10_000);
  });
});
