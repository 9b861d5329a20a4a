import { execFileSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { request as httpRequest } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  type FetchLike,
  fetchTrusting,
  type IdpHandle,
  loginWithKey,
  loopbackCert,
  newKey,
  runApes,
  startIdp,
  trustCaIn,
} from "../helpers/idp.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  makeUserDir,
  readAudit,
  type ShimInstall,
  spawnAsUser,
  type UnixUser,
  VERIFY_USER,
  writeConfig,
} from "../helpers/shim.ts";

/**
 * How the setuid shim runs its children and the command, as a REAL non-root user through the REAL
 * shim against the real IdP: the verifier's deadline and lifetime (a trusted IdP that drips, a full
 * stderr pipe, a killed shim), closed stdio, Ctrl-Z at the approval prompt in a real terminal, and
 * command paths that are resolved before approval. The IdP sits behind a small proxy the test runs
 * (its issuer is the proxy's URL), so the proxy can turn into an IdP that drips one byte a second.
 * Issuers are https only: the proxy speaks TLS with a self-signed certificate, pinned in the policy
 * and named as `ca_file` in every client's config.toml; the IdP behind it is plain http on loopback.
 */

const ALICE = "alice@example.com";
const BOT = "bot@example.com";

let inst: ShimInstall;
let user: UnixUser;
let idp: IdpHandle;
let proxy: Server;
let issuer = "";
let idpCa: string; // the proxy's certificate (PEM file)
let tlsFetch: FetchLike;
let drip = false;
let work: string;
let markers: string;
let agentHome: string;
let aliceHome: string;
let aliceApi: ReturnType<typeof api>;
let grantsEndpoint = "";
let evilPreload: string;

/** Forwards everything to the IdP; with `drip` on, answers a consume with one byte a second, forever. */
function startProxy(tls: { cert: string; key: string }): Promise<Server> {
  const sockets = new Set<import("node:stream").Duplex>();
  const server = createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, (req, res) => {
    if (drip && req.method === "POST" && req.url?.endsWith("/consume")) {
      res.writeHead(200, { "content-type": "application/json" });
      const timer = setInterval(() => res.write(" "), 1000);
      res.on("close", () => clearInterval(timer));
      return;
    }
    const target = new URL(idp.url);
    const up = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("close", () => {
    for (const s of sockets) s.destroy();
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function policy(): string {
  return [
    `issuers = ${JSON.stringify([issuer])}`,
    `approvers = ${JSON.stringify([ALICE])}`,
    `ca_pem = '''\n${readFileSync(idpCa, "utf8").trim()}\n'''`,
    `run_as = ["root"]`,
    "[users]",
    `"${user.name}" = ${JSON.stringify([BOT])}`,
    "",
  ].join("\n");
}

const userEnv = (extra: Record<string, string> = {}) => ({
  HOME: agentHome,
  PATH: "/usr/bin:/bin",
  LANG: "C.UTF-8",
  ...extra,
});

/** Grants for exactly this command, as alice sees them (any status). */
async function grantsFor(
  argv: string[],
): Promise<{ id: string; status: string; request: { command: string[] } }[]> {
  const res = await aliceApi.get(`${grantsEndpoint}?limit=100`);
  return (res.body?.data ?? []).filter(
    (g: { request: { command?: string[] } }) => JSON.stringify(g.request.command) === JSON.stringify(argv),
  );
}

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  ms = 15_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const pendingGrant = (argv: string[]) =>
  until(`a pending grant for ${JSON.stringify(argv)}`, async () => {
    return (await grantsFor(argv)).find((g) => g.status === "pending")?.id;
  });

async function approve(id: string): Promise<void> {
  const r = await runApes(["grants", "approve", id], { HOME: aliceHome });
  expect(r.code, r.stderr).toBe(0);
}

/** Runs argv (the shim first, or a wrapper) as the test user; approves the grant for `approveArgv`. */
async function elevate(
  argv: string[],
  options: { approveArgv?: string[]; env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
) {
  const before = readAudit(inst).length;
  const child = spawnAsUser(user, argv, { env: userEnv(options.env), cwd: options.cwd });
  const done = collect(child, { timeoutMs: options.timeoutMs ?? 30_000 });
  if (options.approveArgv) await approve(await pendingGrant(options.approveArgv));
  const r = await done;
  const lines = readAudit(inst).slice(before);
  return { ...r, audit: lines.at(-1) as AuditLine | undefined, child };
}

/** The verifiers of this installation still alive: _apes processes whose cwd is its cache dir. */
function liveVerifiers(): number[] {
  const uid = Number(execFileSync("id", ["-u", VERIFY_USER], { encoding: "utf8" }).trim());
  const found: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const status = readFileSync(`/proc/${name}/status`, "utf8");
      const real = /^Uid:\s+(\d+)/m.exec(status)?.[1];
      if (Number(real) === uid && readlinkSync(`/proc/${name}/cwd`) === inst.cacheDir)
        found.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

function killVerifiers(): void {
  for (const pid of liveVerifiers()) process.kill(pid, "SIGKILL");
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the shim e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  work = mkdtempSync(join(tmpdir(), "apes-shim-exec-"));
  chmodSync(work, 0o755);
  markers = join(work, "markers");
  mkdirSync(markers, { mode: 0o755 });
  evilPreload = join(work, "evil.cjs");
  writeFileSync(
    evilPreload,
    `if (process.argv.includes("__request")) { require("node:fs").writeSync(3, process.env.EVIL_TOKEN); process.exit(0); }\n`,
    { mode: 0o644 },
  );

  const tlsDir = join(work, "tls");
  mkdirSync(tlsDir, { mode: 0o755 });
  const tls = loopbackCert(tlsDir);
  idpCa = tls.cert;
  chmodSync(idpCa, 0o644);
  tlsFetch = fetchTrusting(idpCa);
  proxy = await startProxy(tls);
  issuer = `https://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  const data = join(work, "idp");
  const alice = newKey(ALICE);
  const bot = newKey(BOT);
  await addUser(data, ALICE, { publicKey: alice.publicLine });
  await addUser(data, BOT, { agent: true, owner: ALICE, publicKey: bot.publicLine });
  idp = await startIdp({ dataDir: data, issuer });
  grantsEndpoint = (await api(issuer, undefined, tlsFetch).get("/.well-known/openid-configuration")).body
    .openape_grants_endpoint;
  aliceApi = api(issuer, await loginWithKey(issuer, ALICE, alice.privateKey, tlsFetch), tlsFetch);

  const pem = (k: ReturnType<typeof newKey>) =>
    k.privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  aliceHome = mkdtempSync(join(work, "alice-"));
  trustIdpCa(aliceHome);
  writeFileSync(join(aliceHome, "key.pem"), pem(alice), { mode: 0o600 });
  const a = await runApes(["login", ALICE, "--key", join(aliceHome, "key.pem"), "--idp", issuer], {
    HOME: aliceHome,
  });
  expect(a.code, a.stderr).toBe(0);
  agentHome = makeUserDir(user, work);
  trustIdpCa(agentHome, user);
  writeFileSync(join(agentHome, "key.pem"), pem(bot), { mode: 0o600 });
  chownSync(join(agentHome, "key.pem"), user.uid, user.gid);
  const b = await collect(
    spawnAsUser(user, [inst.shim, "login", BOT, "--key", join(agentHome, "key.pem"), "--idp", issuer], {
      env: userEnv(),
    }),
  );
  expect(b.code, b.stderr).toBe(0);
  writeConfig(inst, policy());
}, 120_000);

const trustIdpCa = (home: string, owner?: UnixUser) => trustCaIn(home, idpCa, owner);

afterAll(async () => {
  drip = false;
  if (inst) killVerifiers();
  await new Promise((r) => (proxy ? proxy.close(() => r(undefined)) : r(undefined)));
  await idp?.stop();
  await inst?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("the verifier cannot outlive its deadline or the shim", () => {
  it("a request pending for approval keeps one verifier, the early one, idle beside it; approved later, the command runs", async () => {
    const argv = ["id", "-u"];
    const before = readAudit(inst).length;
    const child = spawnAsUser(user, [inst.shim, "--reason", "e2e", "--", ...argv], { env: userEnv() });
    const done = collect(child, { timeoutMs: 60_000 });
    try {
      const id = await pendingGrant(argv);
      // The early verifier (one per user: the slot) waits for the approval, past the 2 s the shim once
      // allowed, so that its start-up is not on the path after the approval; no second one appears.
      const early = await until(
        "the early verifier",
        () => (liveVerifiers().length === 1 ? liveVerifiers() : undefined),
        5000,
      );
      for (let i = 0; i < 30; i++) {
        expect(liveVerifiers()).toEqual(early);
        await new Promise((r) => setTimeout(r, 100));
      }
      await approve(id);
      const r = await done;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe("0\n");
      expect(
        readAudit(inst)
          .slice(before)
          .map((l) => l.decision),
      ).toEqual(["attempt", "allow"]);
      expect(liveVerifiers()).toEqual([]);
    } finally {
      child.kill("SIGKILL");
      killVerifiers();
    }
  }, 90_000);

  it.each([
    ["many ready lines, then a token", `${"ready\n".repeat(1000)}not.a.token`],
    ["ready, then nothing", "ready\n"],
  ])("a requester that writes %s is denied requester_failed, no verifier left", async (_, result) => {
    const r = await elevate([inst.shim, "--", "/usr/bin/true"], {
      env: { NODE_OPTIONS: `--require ${evilPreload}`, EVIL_TOKEN: result },
    });
    expect(r.code).toBe(77);
    expect(r.audit).toMatchObject({ decision: "deny", reason: "requester_failed" });
    await until("no verifier left", () => (liveVerifiers().length === 0 ? true : undefined), 5000);
  });

  it("an IdP that drips its consume answer is cut off by the shim's deadline (denied, no verifier left)", async () => {
    drip = true;
    try {
      const argv = ["id", "-un"];
      const r = await elevate([inst.shim, "--reason", "e2e", "--", ...argv], {
        approveArgv: argv,
        timeoutMs: 90_000,
      });
      expect(r.signal, r.stderr).toBeNull(); // the shim ended by itself, not by the test's timeout
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stdout).toBe("");
      expect(r.audit?.decision).toBe("deny");
      // The shim's deadline, or (with a per-request deadline in the verifier) the verifier's own.
      expect(["verifier_timeout", "idp_unreachable"]).toContain(r.audit?.reason);
      expect(liveVerifiers()).toEqual([]);
    } finally {
      drip = false;
      killVerifiers();
    }
  }, 120_000);

  it("the shim SIGKILLed while the verifier waits for the IdP: the verifier dies with it", async () => {
    drip = true;
    try {
      const argv = ["id", "-gn"];
      const child = spawnAsUser(user, [inst.shim, "--reason", "e2e", "--", ...argv], { env: userEnv() });
      const done = collect(child, { timeoutMs: 60_000 });
      await approve(await pendingGrant(argv));
      const verifier = await until("the verifier", () => liveVerifiers()[0]);
      process.kill(child.pid!, "SIGKILL");
      await done;
      await until("the verifier to die", () => (liveVerifiers().includes(verifier) ? undefined : true), 5000);
    } finally {
      drip = false;
      killVerifiers();
    }
  }, 90_000);

  it("the verifier's diagnostics still reach the caller, through the shim's pipe", async () => {
    const r = await elevate([inst.shim, "--", "/usr/bin/true"], {
      env: { NODE_OPTIONS: `--require ${evilPreload}`, EVIL_TOKEN: "not.a.token" },
    });
    expect(r.code).toBe(77);
    expect(r.stderr).toMatch(/^apes: not allowed \(token_malformed\): /m);
    expect(r.audit).toMatchObject({ decision: "deny", reason: "token_malformed" });
  });

  it("a diagnostic with terminal controls (an unverified iss claim) reaches the caller escaped", async () => {
    const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const iss = `https://evil.example/\u001b]0;owned\u0007\u001b[2J${"x".repeat(2000)}`;
    const token = `${part({ alg: "EdDSA", typ: "JWT" })}.${part({ iss })}.${Buffer.from("sig").toString("base64url")}`;
    const r = await elevate([inst.shim, "--", "/usr/bin/true"], {
      env: { NODE_OPTIONS: `--require ${evilPreload}`, EVIL_TOKEN: token },
    });
    expect(r.audit).toMatchObject({ decision: "deny", reason: "issuer_not_allowed" });
    expect(r.stderr).toContain("issuer https://evil.example/\\x1b]0;owned");
    expect(r.stderr).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f]/);
    expect(r.stderr.length).toBeLessThan(1500); // the detail is cut, not 2000 characters of it
  });

  it("the caller's stderr is a full pipe nobody reads: no verifier is left blocked on it", async () => {
    // A FIFO held open by a reader that never reads, filled up; then the shim runs with it as
    // stderr. The user's own requester hands over a malformed token, so the verifier denies with
    // a diagnostic before any network.
    const dir = makeUserDir(user, work);
    const script = [
      "set -e",
      `mkfifo "${dir}/f"`,
      `/bin/sleep 60 < "${dir}/f" > /dev/null 2>&1 & echo $! > "${dir}/reader"`,
      `exec 2> "${dir}/f"`,
      `dd if=/dev/zero of="${dir}/f" bs=4096 count=64 oflag=nonblock 2>/dev/null || true`,
      `exec "$0" "$@"`,
    ].join("\n");
    const r = await elevate(["/bin/bash", "-c", script, inst.shim, "--", "/usr/bin/true"], {
      env: { NODE_OPTIONS: `--require ${evilPreload}`, EVIL_TOKEN: "not.a.token" },
      timeoutMs: 10_000, // the shim itself may block on the full pipe: the caller's own process
    });
    try {
      expect(r.stdout).toBe("");
      expect(liveVerifiers()).toEqual([]);
    } finally {
      killVerifiers();
      try {
        process.kill(Number(readFileSync(join(dir, "reader"), "utf8")), "SIGKILL");
      } catch {
        // already gone
      }
    }
  }, 30_000);
});

describe("closed stdio", () => {
  const sh = (redirect: string) => `exec "$0" "$@" ${redirect}`;

  it("`2>&-`: the requester still asks and waits, and the approved command runs", async () => {
    const argv = ["id", "-u"];
    const r = await elevate(["/bin/sh", "-c", sh("2>&-"), inst.shim, "--reason", "e2e", "--", ...argv], {
      approveArgv: argv,
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("0\n");
    expect(r.audit?.decision).toBe("allow");
  });

  it("`>&-`: the command gets a writable stdout (/dev/null), not a read-only one", async () => {
    const m = join(markers, "stdout-status");
    const argv = ["sh", "-c", `echo hello; echo $? > ${m}`];
    const r = await elevate(["/bin/sh", "-c", sh(">&-"), inst.shim, "--reason", "e2e", "--", ...argv], {
      approveArgv: argv,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(m, "utf8")).toBe("0\n");
  });

  it("`<&-`: the command gets a readable stdin (/dev/null), not a write-only one", async () => {
    const m = join(markers, "stdin-status");
    const argv = ["sh", "-c", `cat; echo $? > ${m}`];
    const r = await elevate(["/bin/sh", "-c", sh("<&-"), inst.shim, "--reason", "e2e", "--", ...argv], {
      approveArgv: argv,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(m, "utf8")).toBe("0\n");
  });

  it("a requester that fails after creating its grant (its stderr breaks) revokes the grant", async () => {
    const argv = ["id", "-G"];
    const child = spawnAsUser(user, [inst.shim, "--reason", "e2e", "--", ...argv], { env: userEnv() });
    child.stderr!.destroy(); // EPIPE for the first progress line, which comes after the grant exists
    const done = collect(child);
    const grant = await until("the grant", async () => (await grantsFor(argv))[0]);
    await done;
    const status = await until("the grant to leave pending", async () => {
      const g = (await grantsFor(argv)).find((x) => x.id === grant.id);
      return g && g.status !== "pending" ? g.status : undefined;
    });
    expect(status).toBe("revoked");
  });
});

describe("job control at the approval prompt", () => {
  it("Ctrl-Z stops the elevation, `fg` resumes it, and the approved command runs", async () => {
    const socket = `apes-e2e-${process.pid}`;
    const tmux = (...args: string[]) => execFileSync("tmux", ["-L", socket, ...args], { encoding: "utf8" });
    const screen = () => tmux("capture-pane", "-p", "-t", "s");
    const env = Object.entries(userEnv({ TERM: "xterm", PS1: "$ " })).map(([k, v]) => `${k}=${v}`);
    const shell = ["setpriv", "--reuid", String(user.uid), "--regid", String(user.gid), "--init-groups"];
    tmux(
      "new-session",
      "-d",
      "-s",
      "s",
      "-x",
      "200",
      "-y",
      "50",
      [
        ...shell,
        "/usr/bin/env",
        "-i",
        ...env.map((e) => `'${e}'`),
        "/bin/bash",
        "--norc",
        "--noprofile",
        "-i",
      ].join(" "),
    );
    try {
      const argv = ["id", "-ru"];
      tmux("send-keys", "-t", "s", `${inst.shim} --reason e2e -- ${argv.join(" ")}`, "Enter");
      const id = await pendingGrant(argv);
      await until("the waiting line", () => (screen().includes("needs approval") ? true : undefined));
      tmux("send-keys", "-t", "s", "C-z");
      await until(
        "the shell to report the job stopped",
        () => (/Stopped/.test(screen()) ? true : undefined),
        10_000,
      );
      tmux("send-keys", "-t", "s", "fg", "Enter");
      await approve(id);
      const shown = await until("the command's output", () => {
        const text = screen();
        return /approved by/.test(text) && /^0\s*$/m.test(text) ? text : undefined;
      });
      expect(shown).toContain(`approved by ${ALICE}`);
    } finally {
      tmux("kill-server");
    }
  }, 60_000);
});

describe("a command given as a path", () => {
  let scripts: string;
  let decoys: string;

  beforeAll(() => {
    // Root's: the approved script, and a decoy directory whose x.sh is /usr/bin/id.
    scripts = mkdtempSync(join(work, "root-scripts-"));
    decoys = mkdtempSync(join(work, "root-decoys-"));
    chmodSync(scripts, 0o755);
    chmodSync(decoys, 0o755);
    writeFileSync(join(scripts, "x.sh"), "#!/bin/sh\necho approved-script\n", { mode: 0o755 });
    symlinkSync("/usr/bin/id", join(decoys, "x.sh"));
  });

  it("is approved and run by its canonical path: re-pointing a symlinked directory after the request runs nothing new", async () => {
    const cwd = makeUserDir(user, work);
    chmodSync(cwd, 0o755);
    symlinkSync(scripts, join(cwd, "bin"));
    const canonical = [join(scripts, "x.sh")];
    const timed = ["--approval", "timed", "--duration", "10m", "--reason", "e2e"];
    const child = spawnAsUser(user, [inst.shim, ...timed, "--", "./bin/x.sh"], { env: userEnv(), cwd });
    const done = collect(child);
    const id = await pendingGrant(canonical); // the grant names the file, not ./bin/x.sh
    rmSync(join(cwd, "bin"));
    symlinkSync(decoys, join(cwd, "bin"));
    await approve(id);
    const r = await done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("approved-script\n");
    expect(readAudit(inst).at(-1)).toMatchObject({ decision: "allow", argv: canonical });

    // The timed grant is for the script only: ./bin/x.sh is now the decoy, which needs its own grant.
    const again = await collect(
      spawnAsUser(user, [inst.shim, ...timed, "--no-wait", "--", "./bin/x.sh"], { env: userEnv(), cwd }),
    );
    expect(again.code).toBe(75);
    expect(again.stdout).not.toContain("uid=");
    expect(again.stderr).toContain(join(decoys, "x.sh"));
  });

  it("is refused when the caller can change it (the file, its directory, or a symlink on the way)", async () => {
    const mine = makeUserDir(user, work);
    writeFileSync(join(mine, "own.sh"), "#!/bin/sh\necho owned\n", { mode: 0o755 });
    chownSync(join(mine, "own.sh"), user.uid, user.gid);
    writeFileSync(join(mine, "roots.sh"), "#!/bin/sh\necho roots\n", { mode: 0o755 }); // root's file, the user's dir
    symlinkSync(join(scripts, "x.sh"), join(mine, "link.sh")); // a link the user could re-point
    const hop = mkdtempSync(join(work, "root-links-"));
    chmodSync(hop, 0o755);
    symlinkSync(join(mine, "roots.sh"), join(hop, "via.sh")); // root's link into the user's dir
    for (const program of ["./own.sh", "./roots.sh", "./link.sh", join(hop, "via.sh")]) {
      const r = await elevate([inst.shim, "--reason", "e2e", "--", program], { cwd: mine });
      expect(r.code, program).toBe(77);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain("you can change it");
      expect(r.audit).toMatchObject({ decision: "deny", reason: "command_writable", argv: [program] });
    }
    const asked = (await aliceApi.get(`${grantsEndpoint}?limit=100`)).body.data as {
      request: { command: string[] };
    }[];
    expect(
      asked.filter((g) => g.request.command[0]?.startsWith(mine) || g.request.command[0]?.startsWith(hop)),
    ).toEqual([]); // nobody was asked
  });

  it("a path that does not exist is refused before anyone is asked", async () => {
    const r = await elevate([inst.shim, "--reason", "e2e", "--", "./no-such-dir/program"], { cwd: work });
    expect(r.code).toBe(127);
    expect(r.audit).toMatchObject({ decision: "deny", reason: "command_not_found" });
  });
});
