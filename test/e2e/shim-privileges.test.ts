/**
 * The setuid shim's privilege handling, end to end: a real setuid-root shim installed into a temp
 * prefix, run by a real non-root user (apes-e2e) through setpriv. EXEC is replaced by a small
 * stand-in for the TypeScript halves (test/helpers/shim.ts installStubExec) that records what it
 * saw and answers as told, so every branch of the shim is reachable without an IdP: who the
 * requester and the verifier run as, with which environment, groups, fds and input; what the shim
 * does with each verdict and requester outcome; what the approved command gets.
 * The same flow with the real `apes __request`/`apes __verify` belongs to the full-flow e2e tests.
 * Needs root (CI runs as root).
 */
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { canonicalCommand } from "../../cli/elevation/request.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { childPids } from "../helpers/process.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  ensureUser,
  installIntoTempPrefix,
  installStubExec,
  makeUserDir,
  readAudit,
  runAsUser,
  type ShimInstall,
  spawnAsUser,
  stubVerifierGotRequest,
  stubVerifierStarts,
  type UnixUser,
  VERIFY_USER,
  writeConfig,
} from "../helpers/shim.ts";

const SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const POLICY = '# policy read by the verifier through fd 3\n[escapes]\nissuer = "https://idp.test"\n';
const TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";

let inst: ShimInstall;
let stub: string;
let user: UnixUser;
let verifier: UnixUser;
let home: string;
let out: string; // world-writable: markers written by whoever ran
let auditMark = 0;

beforeAll(async () => {
  // A short idle budget for the early verifier (the default is 10 min), so that the tests of its kill
  // path are quick; the last describe checks the default with an install of its own.
  inst = await installIntoTempPrefix({ earlyIdleMs: 2000 });
  stub = installStubExec(inst);
  user = ensureTestUser();
  verifier = ensureUser(VERIFY_USER, true);
  home = makeUserDir(user);
  out = mkdtempSync(join(tmpdir(), "apes-shim-out-"));
  chmodSync(out, 0o1777);
}, 120_000);

afterAll(async () => {
  await inst?.cleanup();
  rmSync(home, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
});

beforeEach(() => {
  for (const f of readdirSync(stub)) rmSync(join(stub, f), { force: true });
  for (const f of readdirSync(out)) rmSync(join(out, f), { recursive: true, force: true });
  writeConfig(inst, POLICY);
  writeFileSync(join(stub, "token"), `${TOKEN}\n`);
  auditMark = readAudit(inst).length;
});

function callerEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: "/usr/bin:/bin", HOME: home, LANG: "C.UTF-8", TERM: "xterm", ...extra };
}

function shim(args: string[], env: Record<string, string> = callerEnv()) {
  return runAsUser(user, [inst.shim, ...args], { env, cwd: home });
}

function setVerdict(verdict: object | string, exit = 0): void {
  writeFileSync(
    join(stub, "verdict"),
    typeof verdict === "string" ? verdict : `${JSON.stringify(verdict)}\n`,
  );
  writeFileSync(join(stub, "verify.exit"), String(exit));
}

function allow(cmd: string[], runAs = "root"): void {
  setVerdict({
    ok: true,
    grant_id: "grant-1",
    cmd_hash: cmdHash(cmd),
    run_as: runAs,
    sub: "agent-1@example.com",
    decided_by: "alice@example.com",
    issuer: "https://idp.test",
    grant_type: "once",
    jti: "jti-1",
  });
}

/** A command that records who ran it and with what environment, under `out/tag.*`. */
function recorder(tag: string): string[] {
  const p = join(out, tag);
  // In the canonical form the shim approves and runs (/bin/sh is /usr/bin/sh where /bin links to usr/bin).
  return canonicalCommand([
    "/bin/sh",
    "-c",
    `id -u > ${p}.uid; id -G > ${p}.groups; cat /proc/$$/environ > ${p}.environ; ls -l /proc/self/fd > ${p}.fds`,
  ]);
}

function stubFile(name: string): string {
  return readFileSync(join(stub, name), "utf8");
}

function environ(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of text.split("\0").filter(Boolean)) {
    const i = kv.indexOf("=");
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

/** `ls -l /proc/self/fd` output as fd -> target, without the directory ls itself opened. */
function fds(text: string): Record<number, string> {
  const map: Record<number, string> = {};
  for (const m of text.split("\n").map((l) => /\s(\d+) -> (.*)$/.exec(l))) {
    if (m && !m[2]!.startsWith("/proc/")) map[Number(m[1])] = m[2]!;
  }
  return map;
}

function newAudit(): AuditLine[] {
  return readAudit(inst).slice(auditMark);
}

function passwd(name: string): string[] {
  return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
}

describe("an approved command", () => {
  it("runs as root with only the allow-listed environment, and is audited", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    const hostile = callerEnv({
      PATH: `${out}:/usr/bin:/bin`,
      NODE_OPTIONS: `--require ${out}/evil.js`,
      LD_PRELOAD: `${out}/evil.so`,
      LD_LIBRARY_PATH: out,
      BASH_ENV: `${out}/evil.sh`,
      ENV: `${out}/evil.sh`,
      PYTHONPATH: out,
      IFS: "x",
      USER: "root",
      APES_USER: "someone-else",
      APES_GRANT_ID: "forged",
      LANG: "C.UTF-8",
      LC_CTYPE: "C.UTF-8",
      LC_ALL: `${out}/evil-locale`, // names a file: dropped
      LC_MESSAGES: "C%s", // format characters: dropped
      LANGUAGE: "de:en",
      TERM: "xterm-256color",
    });
    const r = await shim(["--reason", "restart it", "--", ...cmd], hostile);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(readFileSync(join(out, "ran.uid"), "utf8")).toBe("0\n");
    expect(statSync(join(out, "ran.uid")).uid).toBe(0);
    expect(readFileSync(join(out, "ran.groups"), "utf8").trim().split(" ")).toContain("0");
    expect(environ(readFileSync(join(out, "ran.environ"), "utf8"))).toEqual({
      HOME: "/root",
      USER: "root",
      LOGNAME: "root",
      SHELL: passwd("root")[6],
      PATH: SECURE_PATH,
      APES_USER: user.name,
      APES_GRANT_ID: "grant-1",
      LANG: "C.UTF-8",
      LC_CTYPE: "C.UTF-8",
      LANGUAGE: "de:en",
      TERM: "xterm-256color",
    });
    const audit = newAudit();
    expect(audit).toHaveLength(2);
    // The attempt is on disk before the verifier could consume the grant; the verdict's ids follow.
    expect(audit[0]).toMatchObject({
      decision: "attempt",
      reason: "",
      user: user.name,
      uid: user.uid,
      run_as: "root",
      argv: cmd,
      cmd_hash: cmdHash(cmd),
      grant_id: "",
    });
    expect(audit[0]!.pid).toBe(audit[1]!.pid);
    expect(audit[1]).toMatchObject({
      decision: "allow",
      reason: "",
      user: user.name,
      uid: user.uid,
      run_as: "root",
      argv: cmd,
      cmd_hash: cmdHash(cmd),
      grant_id: "grant-1",
      sub: "agent-1@example.com",
      decided_by: "alice@example.com",
      issuer: "https://idp.test",
    });
    expect(audit[1]!.pid).toBeGreaterThan(1);
    expect(statSync(inst.auditLog).mode & 0o777).toBe(0o600);
  });

  it("with --as runs as that user, and only when the verdict names the same user", async () => {
    const cmd = recorder("as");
    allow(cmd, user.name);
    const r = await shim(["--as", user.name, "--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, "as.uid"), "utf8")).toBe(`${user.uid}\n`);
    const env = environ(readFileSync(join(out, "as.environ"), "utf8"));
    expect(env.USER).toBe(user.name);
    expect(env.HOME).toBe(passwd(user.name)[5]);

    allow(cmd, "root"); // approved for root, asked for apes-e2e
    const denied = await shim([`--as=${user.name}`, "--", ...cmd]);
    expect(denied.code).toBe(77);
    expect(newAudit().at(-1)).toMatchObject({
      decision: "deny",
      reason: "verdict_mismatch",
      run_as: user.name,
    });
  });

  it("resolves a bare command name through the secure PATH, never the caller's", async () => {
    const evilBin = join(out, "bin");
    mkdirSync(evilBin);
    for (const name of ["id", "only-in-evil-path"]) {
      writeFileSync(join(evilBin, name), `#!/bin/sh\ntouch ${out}/hijacked.$(id -u)\n`, { mode: 0o755 });
    }
    allow(["id", "-u"]);
    const r = await shim(["--", "id", "-u"], callerEnv({ PATH: `${evilBin}:/usr/bin:/bin` }));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("0\n");

    allow(["only-in-evil-path"]);
    const nf = await shim(["--", "only-in-evil-path"], callerEnv({ PATH: `${evilBin}:/usr/bin:/bin` }));
    expect(nf.code).toBe(127);
    expect(nf.stderr).toMatch(/only-in-evil-path: command not found/);
    expect(readdirSync(out).filter((f) => f.startsWith("hijacked"))).toEqual([]);
  });

  it("does not run when the audit line cannot be written", async () => {
    const cmd = recorder("unaudited");
    allow(cmd);
    const saved = existsSync(inst.auditLog) ? readFileSync(inst.auditLog) : Buffer.alloc(0);
    rmSync(inst.auditLog, { force: true });
    symlinkSync("/dev/null", inst.auditLog); // O_NOFOLLOW refuses it
    try {
      const r = await shim(["--", ...cmd]);
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/cannot open the audit log/);
      expect(existsSync(join(stub, "request.uid"))).toBe(false); // refused before anyone is asked
      expect(existsSync(join(out, "unaudited.uid"))).toBe(false);
    } finally {
      unlinkSync(inst.auditLog);
      writeFileSync(inst.auditLog, saved, { mode: 0o600 });
    }
  });
});

describe("file descriptors of the caller", () => {
  it("beyond 0-2 never reach the requester, the verifier or the command; a closed stdin is reopened", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    const secret = join(out, "caller-secret");
    writeFileSync(secret, "x", { mode: 0o644 });
    const r = await runAsUser(
      user,
      ["/bin/bash", "-c", `exec 5<${secret} 7<${secret}; exec 0<&-; exec "$0" "$@"`, inst.shim, "--", ...cmd],
      { env: callerEnv(), cwd: home },
    );
    expect(r.code, r.stderr).toBe(0);
    const req = fds(stubFile("request.fds"));
    expect(Object.keys(req).map(Number)).toEqual([0, 1, 2, 3]);
    // glibc reopens a closed 0-2 for a setuid program before main (stdin as /dev/full), the shim
    // would use /dev/null: either way never a descriptor the next open() could hand out.
    expect(req[0]).toMatch(/^\/dev\/(null|full)$/);
    expect(req[3]).toMatch(/^pipe:/);
    expect(Object.keys(fds(stubFile("verify.fds"))).map(Number)).toEqual([0, 1, 2, 3]);
    const ran = fds(readFileSync(join(out, "ran.fds"), "utf8"));
    expect(Object.keys(ran).map(Number)).toEqual([0, 1, 2]);
    expect(ran[0]).toMatch(/^\/dev\/(null|full)$/);
    expect(Object.values(ran)).not.toContain(secret);
  });
});

describe("resource limits planted by the caller", () => {
  // The shim lifts RLIMIT_FSIZE for its audit write when it may (CAP_SYS_RESOURCE in the bounding
  // set; containers often drop it). Either way the audit log never gets a torn line.
  const capBnd = BigInt(`0x${/CapBnd:\s*([0-9a-f]+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]}`);
  const canRaise = ((capBnd >> 24n) & 1n) === 1n;

  it(`a small RLIMIT_FSIZE cannot tear the audit line (${canRaise ? "lifted" : "refused"} here)`, async () => {
    const cmd = [...recorder("ran"), "x".repeat(700)]; // the stub records < 1 KiB, the audit line is more
    allow(cmd);
    if (!existsSync(inst.auditLog) || statSync(inst.auditLog).size < 1024) {
      await shim(["--", ...cmd]); // make sure the log is already past the limit
      auditMark = readAudit(inst).length;
      rmSync(join(out, "ran.uid"), { force: true });
    }
    const r = await runAsUser(
      user,
      ["/bin/bash", "-c", 'ulimit -f 1; exec "$0" "$@"', inst.shim, "--", ...cmd],
      {
        env: callerEnv(),
        cwd: home,
      },
    );
    if (canRaise) {
      expect(r.code, r.stderr).toBe(0);
      expect(newAudit()).toEqual([
        expect.objectContaining({ decision: "attempt", argv: cmd }),
        expect.objectContaining({ decision: "allow", argv: cmd }),
      ]);
      expect(existsSync(join(out, "ran.uid"))).toBe(true);
    } else {
      expect(r.code).toBe(77);
      expect(r.stderr).toMatch(/audit log .* is full or over the file size limit/);
      expect(stubVerifierGotRequest(stub)).toBe(false); // no attempt line, no token for the verifier, nothing spent
      expect(newAudit()).toEqual([]); // readAudit parses every line: none is torn
      expect(readFileSync(inst.auditLog, "utf8").endsWith("}\n")).toBe(true);
      expect(existsSync(join(out, "ran.uid"))).toBe(false);
    }
  });
});

describe("the requester", () => {
  it("runs as the caller with the caller's environment, the token pipe on fd 3 and the options as given", async () => {
    const cmd = canonicalCommand(["/bin/true", "a b", "", "ü"]);
    allow(cmd);
    const env = callerEnv({
      NODE_OPTIONS: "--max-old-space-size=64",
      LD_PRELOAD: "/nonexistent.so",
      X_MINE: "1",
    });
    const r = await shim(
      ["run", "--reason", "why not", "--approval=timed", "--duration", "1h", "--json", "--", ...cmd],
      env,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(stubFile("request.uid")).toBe(`${user.uid}\n`);
    expect(stubFile("request.groups").trim().split(" ").map(Number)).toEqual([user.gid]);
    expect(stubFile("request.fd3")).toBe("open\n");
    // With no warm requester to answer, it is told where to start one (docs/elevation.md section 2).
    expect(stubFile("request.argv").split("\0").slice(0, -1)).toEqual([
      "__request",
      "--result-fd",
      "3",
      "--resident",
      expect.stringMatching(new RegExp(`^/tmp/apes-${user.uid}/requester-[0-9a-f]{32}\\.sock$`)),
      "--reason",
      "why not",
      "--approval=timed",
      "--duration",
      "1h",
      "--json",
      "--",
      ...cmd,
    ]);
    // The caller's own environment; the dynamic loader drops LD_* for a setuid program.
    const { LD_PRELOAD, ...rest } = env;
    expect(LD_PRELOAD).toBeDefined();
    expect(environ(stubFile("request.environ"))).toEqual(rest);
  });

  it.each([
    ["exit:75", 75, "pending", ""],
    ["exit:77", 77, "deny", "requester_failed"],
    ["exit:130", 130, "deny", "requester_failed"],
    ["exit:1", 1, "deny", "requester_failed"],
    ["garbage", 77, "deny", "requester_failed"],
    // A failing requester's reason code is audited under a requester_ prefix, only in the reason charset.
    ["reason:77:grant_denied", 77, "deny", "requester_grant_denied"],
    ["reason:69:idp_unreachable", 69, "deny", "requester_idp_unreachable"],
    ["reason:77:Evil reason", 77, "deny", "requester_failed"],
    ["reason:77:a.b", 77, "deny", "requester_failed"], // (a token-shaped a.b.c goes to the verifier: below)
    [`reason:77:${"x".repeat(65)}`, 77, "deny", "requester_failed"],
    // After "ready" (an approved grant, the verifier started) the same rules, and one verifier at most.
    ["ready+exit:0", 77, "deny", "requester_failed"],
    ["ready+exit:75", 75, "pending", ""],
    ["ready+reason:69:idp_unreachable", 69, "deny", "requester_idp_unreachable"],
    ["ready+ready+token", 77, "deny", "requester_failed"],
    [`${"ready+".repeat(20)}token`, 77, "deny", "requester_failed"],
  ])("outcome %s: exit %i, audit %s %s, nothing runs", async (mode, code, decision, reason) => {
    const cmd = recorder("never");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), mode);
    const r = await shim(["--", ...cmd]);
    expect(r.code).toBe(code);
    expect(stubVerifierGotRequest(stub)).toBe(false);
    // One at most: the early one (killed at the result unless "ready" came first, maybe before it
    // records its start), adopted at "ready"; never a second.
    expect(stubVerifierStarts(stub)).toBeLessThanOrEqual(1);
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(newAudit()).toEqual([
      expect.objectContaining({ decision, reason, argv: cmd, cmd_hash: cmdHash(cmd) }),
    ]);
  });

  it("an empty token is refused", async () => {
    const cmd = recorder("never");
    allow(cmd);
    writeFileSync(join(stub, "token"), "");
    const r = await shim(["--", ...cmd]);
    expect(r.code).toBe(77);
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(newAudit().at(-1)?.reason).toBe("requester_failed");
  });

  it("says ready, then hands over the token: one verifier, the command runs", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), "ready+token");
    const r = await shim(["--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(out, "ran.uid"))).toBe(true);
    expect(stubVerifierStarts(stub)).toBe(1);
    expect(newAudit().map((l) => l.decision)).toEqual(["attempt", "allow"]);
  });

  /** The stand-in verifier (started after "ready") is gone: exited, or a zombie. */
  function verifierGone(): boolean {
    try {
      return /^State:\s+Z/m.test(readFileSync(`/proc/${stubFile("verify.pid").trim()}/status`, "utf8"));
    } catch {
      return true;
    }
  }

  it.each([
    ["keeps the pipe open", "ready+hold"],
    ["closes the pipe but does not exit", "ready+linger"],
  ])(
    "says ready, then %s: denied verifier_timeout at the verifier's deadline, the verifier gone",
    async (_, mode) => {
      const cmd = recorder("never");
      allow(cmd);
      writeFileSync(join(stub, "request.mode"), mode);
      const child = spawnAsUser(user, [inst.shim, "--", ...cmd], { env: callerEnv(), cwd: home });
      const r = await collect(child, { timeoutMs: 60_000 });
      try {
        expect(r.signal).toBeNull(); // the shim ended by itself
        expect(r.code).toBe(69);
        expect(r.stderr).toContain("no token from the requester within 20 s");
        expect(stubVerifierStarts(stub)).toBe(1);
        expect(stubVerifierGotRequest(stub)).toBe(false);
        for (let i = 0; i < 100 && !verifierGone(); i++) await sleep(50);
        expect(verifierGone()).toBe(true);
        expect(newAudit()).toEqual([
          expect.objectContaining({ decision: "deny", reason: "verifier_timeout" }),
        ]);
      } finally {
        process.kill(Number(stubFile("request.pid").trim()), "SIGKILL");
      }
    },
    90_000,
  );

  /** sleep: waits with its result pipe closed; wait: with it open, as a requester waiting for a human. */
  async function startWaiting(cmd: string[], mode: "sleep" | "wait" = "sleep") {
    writeFileSync(join(stub, "request.mode"), mode);
    allow(cmd);
    const child = spawnAsUser(user, [inst.shim, "--reason", "r", "--", ...cmd], {
      env: callerEnv(),
      cwd: home,
    });
    const done = collect(child, { timeoutMs: 30_000 });
    for (let i = 0; i < 200 && !existsSync(join(stub, "request.sleeping")); i++) await sleep(50);
    const requester = Number(stubFile("request.pid").trim());
    expect(requester).toBeGreaterThan(1);
    return { child, done, requester };
  }

  it("killed (SIGKILL) while waiting: nothing runs, audit deny requester_failed", async () => {
    const cmd = recorder("never");
    const { done, requester } = await startWaiting(cmd);
    process.kill(requester, "SIGKILL");
    const r = await done;
    expect(r.code).toBe(77);
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(stubVerifierGotRequest(stub)).toBe(false);
    expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "requester_failed" })]);
  });

  /** The live verifiers of this install (cwd CACHE_DIR: other tests run _apes too), one per session:
   * each verifier is a session of its own (the stand-in's `cat` children belong to it). */
  function liveVerifiers(): number[] {
    const sessions = new Set<number>();
    for (const e of readdirSync("/proc")) {
      if (!/^\d+$/.test(e)) continue;
      try {
        const uid = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${e}/status`, "utf8"))?.[1];
        if (Number(uid) !== verifier.uid || readlinkSync(`/proc/${e}/cwd`) !== inst.cacheDir) continue;
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        sessions.add(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[3]));
      } catch {
        // gone meanwhile, or a zombie (no cwd)
      }
    }
    return [...sessions];
  }

  it("a waiting requester has at most one early verifier beside it, killed within the idle budget (2 s here)", async () => {
    const cmd = recorder("never");
    const { child, done, requester } = await startWaiting(cmd, "wait");
    try {
      for (let i = 0; i < 100 && !existsSync(join(stub, "verify.pid")); i++) await sleep(20);
      expect(stubVerifierStarts(stub)).toBe(1); // the early one
      for (let i = 0; i < 100 && !verifierGone(); i++) await sleep(50);
      expect(verifierGone()).toBe(true); // idle past the budget: killed while the requester still waits
      expect(stubVerifierGotRequest(stub)).toBe(false); // it learnt nothing
      expect(existsSync(join(stub, "request.sleeping"))).toBe(true);
      await sleep(1000);
      expect(stubVerifierStarts(stub)).toBe(1); // and none after it while pending
      expect(liveVerifiers()).toEqual([]);
    } finally {
      process.kill(child.pid!, "SIGKILL");
      process.kill(requester, "SIGKILL"); // the stand-in requester holds the caller's stdio
      await done;
    }
    expect(existsSync(join(out, "never.uid"))).toBe(false);
  }, 30_000);

  it("one user cannot hold more than one idle _apes process: parallel or stopped elevations get no early verifier", async () => {
    const cmd = recorder("never");
    writeFileSync(join(stub, "request.mode"), "wait");
    allow(cmd);
    const shims = Array.from({ length: 5 }, () =>
      spawnAsUser(user, [inst.shim, "--reason", "r", "--", ...cmd], { env: callerEnv(), cwd: home }),
    );
    const dones = shims.map((c) => collect(c, { timeoutMs: 30_000 }));
    try {
      // The first holder is stopped (SIGSTOP: it can no longer kill its verifier): the slot still holds.
      for (let i = 0; i < 100 && !existsSync(join(stub, "verify.pid")); i++) await sleep(20);
      let most = 0;
      for (let i = 0; i < 30; i++) {
        most = Math.max(most, liveVerifiers().length);
        if (i === 5) for (const c of shims) process.kill(c.pid!, "SIGSTOP");
        await sleep(100);
      }
      expect(most).toBe(1);
      expect(stubVerifierStarts(stub)).toBe(1);
      // A sixth elevation while the stopped one holds the slot: no early verifier either.
      const more = spawnAsUser(user, [inst.shim, "--reason", "r", "--", ...cmd], {
        env: callerEnv(),
        cwd: home,
      });
      shims.push(more);
      dones.push(collect(more, { timeoutMs: 30_000 }));
      await sleep(1000);
      expect(liveVerifiers().length).toBe(1);
      expect(stubVerifierStarts(stub)).toBe(1);
      for (const c of shims) process.kill(c.pid!, "SIGCONT");
      // Continued, its holder kills the idle verifier (the budget is long past).
      for (let i = 0; i < 100 && liveVerifiers().length > 0; i++) await sleep(50);
      expect(liveVerifiers()).toEqual([]);
    } finally {
      const requesters = shims.flatMap((c) => childPids(c.pid!));
      for (const c of shims) process.kill(c.pid!, "SIGKILL");
      for (const r of requesters) process.kill(r, "SIGKILL");
      await Promise.all(dones);
    }
  }, 60_000);

  it("approved after the idle budget: a fresh verifier at ready gets the whole policy and the token; the command runs", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), "slow+ready+token");
    const r = await shim(["--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(out, "ran.uid"))).toBe(true);
    expect(stubVerifierStarts(stub)).toBe(2); // the early one killed at 2 s, a fresh one at ready
    expect(stubFile("verify.config")).toBe(POLICY); // the policy rewound for it, read whole
    expect(JSON.parse(stubFile("verify.stdin")).jwt).toBe(TOKEN);
    expect(newAudit().map((l) => l.decision)).toEqual(["attempt", "allow"]);
  }, 30_000);

  it.each([
    ["missing", (d: string) => rmSync(d, { recursive: true, force: true })],
    ["readable by others (0755)", (d: string) => chmodSync(d, 0o755)],
    ["owned by the caller", (d: string) => chownSync(d, user.uid, user.gid)],
  ])(
    "the slot directory %s: no early verifier (started at ready only); the elevation still works",
    async (_, spoil) => {
      const saved = `${inst.slotDir}.saved`;
      execFileSync("cp", ["-a", inst.slotDir, saved]);
      spoil(inst.slotDir);
      try {
        const cmd = recorder("never");
        const { child, done, requester } = await startWaiting(cmd, "wait");
        await sleep(1000); // time enough for a verifier to record its start, were one started
        expect(existsSync(join(stub, "verify.pid"))).toBe(false);
        process.kill(child.pid!, "SIGKILL");
        process.kill(requester, "SIGKILL");
        await done;
        expect(stubVerifierStarts(stub)).toBe(0);
        for (const f of readdirSync(stub))
          if (f.startsWith("request.")) rmSync(join(stub, f), { force: true });
        const ran = recorder("ran");
        allow(ran);
        writeFileSync(join(stub, "request.mode"), "ready+token");
        const r = await shim(["--", ...ran]);
        expect(r.code, r.stderr).toBe(0);
        expect(stubVerifierStarts(stub)).toBe(1);
      } finally {
        rmSync(inst.slotDir, { recursive: true, force: true });
        execFileSync("mv", [saved, inst.slotDir]);
      }
    },
    30_000,
  );

  it("Ctrl-C reaches the requester, not the shim: exit 130, nothing runs", async () => {
    const cmd = recorder("never");
    const { child, done, requester } = await startWaiting(cmd);
    // The terminal signals the whole foreground group: the shim ignores it while it waits.
    process.kill(child.pid!, "SIGINT");
    process.kill(requester, "SIGINT");
    const r = await done;
    expect(r.signal).toBeNull();
    expect(r.code).toBe(130);
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "requester_failed" })]);
  });
});

describe("the verifier", () => {
  it("runs as _apes without groups, in CACHE_DIR, with a fixed environment, the policy on fd 3 and the request on stdin", async () => {
    const cmd = canonicalCommand(["/bin/echo", 'quote " backslash \\ newline \n tab \t', "\u{1f412}"]);
    allow(cmd);
    const r = await shim(
      ["--reason", "x", "--", ...cmd],
      callerEnv({ NODE_OPTIONS: `--require ${out}/evil.js`, PATH: `${out}:/usr/bin:/bin`, HOME: home }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(stubFile("verify.uid")).toBe(`${verifier.uid}\n`);
    // setgroups(0, NULL): id -G shows only the effective gid
    expect(stubFile("verify.groups").trim()).toBe(String(verifier.gid));
    expect(stubFile("verify.cwd").trim()).toBe(inst.cacheDir);
    expect(environ(stubFile("verify.environ"))).toEqual({
      PATH: SECURE_PATH,
      HOME: inst.cacheDir,
      LANG: "C.UTF-8",
      APES_VERIFIER: "1",
    });
    expect(stubFile("verify.config")).toBe(POLICY);
    // ls inherits exactly what the verifier got: 0-2 and the policy on 3 (ls's own stdout is a file)
    const vfds = fds(stubFile("verify.fds"));
    expect(Object.keys(vfds).map(Number)).toEqual([0, 1, 2, 3]);
    expect(vfds[0]).toMatch(/^pipe:/);
    expect(vfds[3]).toBe(inst.config);
    const line = stubFile("verify.stdin");
    expect(line.endsWith("}\n")).toBe(true);
    expect(line.trimEnd()).not.toContain("\n");
    expect(JSON.parse(line)).toEqual({
      jwt: TOKEN,
      argv: cmd,
      cmd_hash: cmdHash(cmd),
      user: user.name,
      uid: user.uid,
      run_as: "root",
    });
  });

  const ok = (cmd: string[]) => ({ ok: true, grant_id: "g", cmd_hash: cmdHash(cmd), run_as: "root" });
  const cases: Array<[string, (cmd: string[]) => object | string, number, number, string]> = [
    [
      "denied with a reason",
      () => ({ ok: false, reason: "self_approval", detail: "x" }),
      77,
      77,
      "self_approval",
    ],
    ["ok:false with exit 0", () => ({ ok: false, reason: "token_expired" }), 0, 77, "token_expired"],
    ["IdP unreachable", () => ({ ok: false, reason: "idp_unreachable" }), 69, 69, "idp_unreachable"],
    ["config error without a verdict", () => "", 78, 78, "config_invalid"],
    ["ok:true but exit 3", (c) => ok(c), 3, 77, "verifier_failed"],
    ["ok:true but exit 77", (c) => ok(c), 77, 77, "verifier_failed"],
    ["a different command", () => ok(["/bin/true"]), 0, 77, "verdict_mismatch"],
    ["a different run_as", (c) => ({ ...ok(c), run_as: "daemon" }), 0, 77, "verdict_mismatch"],
    ["no cmd_hash", (c) => ({ ...ok(c), cmd_hash: undefined }), 0, 77, "verdict_mismatch"],
    ["ok as a string", (c) => ({ ...ok(c), ok: "true" }), 0, 77, "verifier_failed"],
    ["a nested value", (c) => ({ ...ok(c), extra: { a: 1 } }), 0, 77, "verifier_failed"],
    ["no grant id", (c) => ({ ...ok(c), grant_id: "" }), 0, 77, "verifier_failed"],
    ["two lines", (c) => `${JSON.stringify(ok(c))}\n${JSON.stringify(ok(c))}\n`, 0, 77, "verifier_failed"],
    ["not JSON", () => "yes\n", 0, 77, "verifier_failed"],
    ["an odd reason", () => ({ ok: false, reason: "\u001b[31mred" }), 77, 77, "verifier_failed"],
    ["over 64 KiB", (c) => ({ ...ok(c), pad: "x".repeat(70_000) }), 0, 77, "verifier_failed"],
  ];
  it.each(cases)("%s: exit %#, nothing runs", async (_name, verdict, exit, code, reason) => {
    const cmd = recorder("never");
    setVerdict(verdict(cmd), exit);
    const r = await shim(["--", ...cmd]);
    expect(r.code, r.stderr).toBe(code);
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(newAudit()).toEqual([
      expect.objectContaining({ decision: "attempt", argv: cmd }),
      expect.objectContaining({ decision: "deny", reason, argv: cmd }),
    ]);
  });
});

describe("planted by the caller", () => {
  it("LD_PRELOAD and NODE_OPTIONS never reach a privileged process", async () => {
    // A preload library whose constructor records the ids of every process it is loaded into.
    const src = join(out, "evil.c");
    const so = join(out, "evil.so");
    writeFileSync(
      src,
      `#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {
  char p[512];
  snprintf(p, sizeof p, "${out}/preload.%d.%d.%d", (int)getuid(), (int)geteuid(), (int)getpid());
  FILE *f = fopen(p, "w");
  if (f) fclose(f);
}
`,
    );
    execFileSync("cc", ["-shared", "-fPIC", "-o", so, src]);
    chmodSync(so, 0o755);
    writeFileSync(join(out, "evil.js"), `require("fs").writeFileSync("${out}/node."+process.getuid(), "")`);
    // Control: the probe works when the caller runs something unprivileged.
    const control = await runAsUser(user, ["/bin/true"], { env: callerEnv({ LD_PRELOAD: so }) });
    expect(control.code).toBe(0);
    expect(readdirSync(out).filter((f) => f.startsWith(`preload.${user.uid}.`)).length).toBeGreaterThan(0);
    for (const f of readdirSync(out)) if (f.startsWith("preload.")) rmSync(join(out, f));

    const cmd = recorder("ran");
    allow(cmd);
    const r = await shim(
      ["--", ...cmd],
      callerEnv({ LD_PRELOAD: so, LD_LIBRARY_PATH: out, NODE_OPTIONS: `--require ${out}/evil.js` }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, "ran.uid"), "utf8")).toBe("0\n");
    const privileged = readdirSync(out).filter((f) => {
      const m = /^(?:preload|node)\.(\d+)(?:\.(\d+))?/.exec(f);
      return m?.slice(1).some((id) => id === "0" || id === String(verifier.uid)) ?? false;
    });
    expect(privileged).toEqual([]);
  });
});

describe("not an elevation", () => {
  it.each([
    [["grants", "list"]],
    [["--version"]],
    [["run", "--reason", "x", "ls"]], // no --: the CLI explains
    [["--reason", "x", "--"]], // no command
    [["--as", "a", "--as", "b", "--", "ls"]], // an option twice
    [["--bogus", "--", "ls"]],
  ])("%j runs EXEC as the caller, with argv as given", async (args) => {
    const r = await shim(args);
    expect(r.code, r.stderr).toBe(0);
    expect(stubFile("plain.uid")).toBe(`${user.uid}\n`);
    expect(stubFile("plain.argv").split("\0").slice(0, -1)).toEqual(args);
    expect(newAudit()).toEqual([]);
  });
});

describe("a requester that delivered its token and is still exiting", () => {
  it("the verifier already has the token while the requester shuts down; exit 0, the command runs", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), "ready+token+exit:0");
    const r = await shim(["--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(stub, "verify.before-requester-exit"))).toBe(true);
    expect(existsSync(join(out, "ran.uid"))).toBe(true);
    expect(newAudit().map((l) => l.decision)).toEqual(["attempt", "allow"]);
  });

  it("exits non-zero after its token: nothing runs, denied requester_failed after the attempt", async () => {
    const cmd = recorder("never");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), "ready+token+exit:3");
    const r = await shim(["--", ...cmd]);
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("the requester failed after it delivered its token");
    expect(existsSync(join(out, "never.uid"))).toBe(false);
    expect(newAudit()).toEqual([
      expect.objectContaining({ decision: "attempt" }),
      expect.objectContaining({ decision: "deny", reason: "requester_failed" }),
    ]);
  });
});

describe("with the default idle budget (10 min)", () => {
  let saved: { inst: ShimInstall; stub: string };
  beforeAll(async () => {
    saved = { inst, stub };
    inst = await installIntoTempPrefix();
    stub = installStubExec(inst);
  }, 120_000);
  afterAll(async () => {
    const mine = inst;
    ({ inst, stub } = saved);
    await mine?.cleanup();
  });

  it("approved after 3 s (a person deciding): the early verifier is adopted, none other started; the command runs", async () => {
    const cmd = recorder("ran");
    allow(cmd);
    writeFileSync(join(stub, "request.mode"), "slow+ready+token");
    const r = await shim(["--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(out, "ran.uid"))).toBe(true);
    expect(stubVerifierStarts(stub)).toBe(1); // warm at the approval: its start-up is off the path
    expect(stubFile("verify.config")).toBe(POLICY);
    expect(JSON.parse(stubFile("verify.stdin")).jwt).toBe(TOKEN);
    expect(newAudit().map((l) => l.decision)).toEqual(["attempt", "allow"]);
  }, 30_000);
});
