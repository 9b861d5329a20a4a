/**
 * The setuid shim's audit trail and the files it trusts, attacked as a local user would: a real
 * setuid-root shim in a temp prefix, run by a real non-root user (apes-e2e) through setpriv, with
 * EXEC replaced by the recording stand-in of test/helpers/shim.ts (installStubExec) so every step
 * is reachable without an IdP. Each case is an attack from the hardening issue: resource limits that
 * kill or starve the shim before it audits, a lock held forever, a FIFO or a group-writable
 * directory in the policy's or the log's path, a shim killed after its grant was consumed, and
 * what the approved command inherits. Needs root (CI runs as root).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  existsSync,
  linkSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { canonicalCommand } from "../../cli/elevation/request.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import {
  type AuditLine,
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  installStubExec,
  makeUserDir,
  readAudit,
  runAsUser,
  type ShimInstall,
  spawnAsUser,
  stubVerifierGotRequest,
  type UnixUser,
  writeConfig,
} from "../helpers/shim.ts";

const POLICY = '[escapes]\nissuer = "https://idp.test"\n';
const TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";
// The shim lifts the caller's hard limits only with CAP_SYS_RESOURCE in its bounding set (containers
// often drop it); without it a limit too small for the audit line refuses the elevation instead.
const capBnd = BigInt(`0x${/CapBnd:\s*([0-9a-f]+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]}`);
const canRaise = ((capBnd >> 24n) & 1n) === 1n;

let inst: ShimInstall;
let stub: string;
let user: UnixUser;
let home: string;
let out: string; // world-writable: markers written by whoever ran
let auditMark = 0;

beforeAll(async () => {
  inst = await installIntoTempPrefix();
  stub = installStubExec(inst);
  user = ensureTestUser();
  home = makeUserDir(user);
  out = mkdtempSync(join(tmpdir(), "apes-shim-audit-"));
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
  rmSync(inst.config, { force: true }); // writing into a FIFO left there would block
  writeConfig(inst, POLICY);
  writeFileSync(join(stub, "token"), `${TOKEN}\n`);
  auditMark = readAudit(inst).length;
});

const callerEnv = () => ({ PATH: "/usr/bin:/bin", HOME: home, LANG: "C.UTF-8" });

function shim(args: string[], timeoutMs = 20_000) {
  return runAsUser(user, [inst.shim, ...args], { env: callerEnv(), cwd: home, timeoutMs });
}

/** The shim started by bash after `setup` (ulimits, redirections), exec'd so it keeps bash's pid. */
function shimAfter(setup: string, args: string[], timeoutMs = 20_000) {
  return runAsUser(user, ["/bin/bash", "-c", `${setup}; exec "$0" "$@"`, inst.shim, ...args], {
    env: callerEnv(),
    cwd: home,
    timeoutMs,
  });
}

function allow(cmd: string[]): void {
  const verdict = { ok: true, grant_id: "grant-1", cmd_hash: cmdHash(cmd), run_as: "root", sub: "agent-1" };
  writeFileSync(join(stub, "verdict"), `${JSON.stringify(verdict)}\n`);
}

/** A command that leaves out/tag.ran when it runs. */
function marking(tag: string): { cmd: string[]; ran: () => boolean } {
  const file = join(out, `${tag}.ran`);
  return { cmd: ["/usr/bin/touch", file], ran: () => existsSync(file) };
}

const newAudit = (): AuditLine[] => readAudit(inst).slice(auditMark);
const asked = () => existsSync(join(stub, "request.uid"));
const verified = () => stubVerifierGotRequest(stub);

/** Runs fn with path's mode changed, and puts it back. */
async function withMode<T>(path: string, mode: number, fn: () => Promise<T>): Promise<T> {
  const saved = statSync(path).mode & 0o7777;
  chmodSync(path, mode);
  try {
    return await fn();
  } finally {
    chmodSync(path, saved);
  }
}

describe("resource limits of the caller cannot kill the shim before it audits", () => {
  it(`ulimit -f 0 with stderr to a file: a clean exit, not SIGXFSZ (${canRaise ? "lifted" : "refused"} here)`, async () => {
    rmSync(inst.config);
    const { cmd, ran } = marking("fsize");
    const err = join(out, "stderr.txt");
    const r = await shimAfter(`exec 2>${err}; ulimit -f 0`, ["--", ...cmd]);
    expect(r.signal).toBeNull();
    expect(ran()).toBe(false);
    expect(asked()).toBe(false);
    if (canRaise) {
      expect(r.code).toBe(78);
      expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "config_missing" })]);
      expect(readFileSync(err, "utf8")).toMatch(/no policy at/);
    } else {
      expect(r.code).toBe(77); // no line can be written under this limit: refused, and nothing spent
      expect(newAudit()).toEqual([]);
    }
  });

  it(`ulimit -n 4: the attempt still ends in an audit line (${canRaise ? "lifted" : "refused"} here)`, async () => {
    const { cmd, ran } = marking("nofile");
    allow(cmd);
    const r = await shimAfter("ulimit -n 4", ["--", ...cmd]);
    expect(r.signal).toBeNull();
    const last = newAudit().at(-1);
    expect(last, r.stderr).toBeDefined();
    expect(last!.decision).toBe(ran() ? "allow" : "deny");
    if (!canRaise) {
      // fds 0-2 and the audit log fill the limit: the next file cannot be opened, and that is on record
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/: Too many open files/);
      expect(last).toMatchObject({ decision: "deny", reason: "shim_error" });
      expect(asked()).toBe(false);
    }
  });

  it("a full audit log stops the elevation before the verifier, so no grant is spent for nothing", async () => {
    const { cmd, ran } = marking("full");
    allow(cmd);
    const logDir = dirname(inst.auditLog);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", logDir]);
    try {
      writeFileSync(inst.auditLog, "", { mode: 0o600 });
      // fill the file system to the last byte, then run
      execFileSync("sh", ["-c", `dd if=/dev/zero of=${logDir}/fill bs=1k count=64 2>/dev/null || true`]);
      const r = await shim(["--", ...cmd]);
      expect(asked()).toBe(true);
      expect(verified()).toBe(false);
      expect(ran()).toBe(false);
      expect(r.code).toBe(77);
      expect(r.stderr).toMatch(/audit log .* is full/);
      expect(readFileSync(inst.auditLog, "utf8")).toBe(""); // nothing torn either
    } finally {
      execFileSync("umount", [logDir]);
    }
  });
});

describe("no local user can freeze elevation for everyone", () => {
  it("a lock held on the audit log (a stopped holder) denies within the deadline instead of hanging", async () => {
    const { cmd, ran } = marking("locked");
    allow(cmd);
    const ready = join(out, "locked.ready");
    // flock(1) holds the lock itself (-o: not its child) until its child sh reads EOF on stdin.
    const holder: ChildProcess = spawn(
      "flock",
      ["-x", "-o", inst.auditLog, "/bin/sh", "-c", `touch ${ready}; read x`],
      { stdio: ["pipe", "ignore", "ignore"] },
    );
    try {
      for (let i = 0; i < 200 && !existsSync(ready); i++) await sleep(25);
      expect(existsSync(ready)).toBe(true);
      const r = await shim(["--", ...cmd], 20_000);
      expect(r.signal).toBeNull(); // not killed by the test's own 20 s bound
      expect(r.code).toBe(77);
      expect(r.stderr).toMatch(/audit log .* was locked by another process for 3 s: try again/);
      expect(verified()).toBe(false); // the attempt line could not be written: nothing consumed
      expect(ran()).toBe(false);
    } finally {
      holder.stdin?.end();
      await new Promise((res) => (holder.exitCode !== null ? res(null) : holder.once("exit", res)));
    }
    expect(newAudit()).toEqual([]);
    // and once the lock is free the next elevation goes through
    const again = await shim(["--", ...cmd]);
    expect(again.code, again.stderr).toBe(0);
    expect(ran()).toBe(true);
  });

  it("the caller cannot SIGSTOP its shim while it waits for or holds the audit lock", async () => {
    const { cmd } = marking("stop");
    allow(cmd);
    const ready = join(out, "stop.ready");
    const holder: ChildProcess = spawn(
      "flock",
      ["-x", "-o", inst.auditLog, "/bin/sh", "-c", `touch ${ready}; read x`],
      { stdio: ["pipe", "ignore", "ignore"] },
    );
    try {
      for (let i = 0; i < 200 && !existsSync(ready); i++) await sleep(25);
      const child = spawnAsUser(user, [inst.shim, "--", ...cmd], { env: callerEnv(), cwd: home });
      const done = collect(child, { timeoutMs: 20_000 });
      // In the lock section the shim's real uid is root (status "Uid: real effective saved fs"); the
      // pid is setpriv's (root too) until it execs the shim, whose name is apes.
      const status = () => readFileSync(`/proc/${child.pid}/status`, "utf8");
      const inLock = () => /^Name:\s+apes$/m.test(status()) && /^Uid:\s+0\s/m.test(status());
      for (let i = 0; i < 1000 && !inLock(); i++) await sleep(5);
      expect(/^Uid:\s+(.*)$/m.exec(status())?.[1]?.split(/\s+/)).toEqual(["0", "0", "0", "0"]);
      const stop = await runAsUser(user, ["/bin/kill", "-STOP", String(child.pid)], { env: callerEnv() });
      expect(stop.code).not.toBe(0);
      expect(stop.stderr).toMatch(/Operation not permitted/);
      holder.stdin?.end();
      const r = await done;
      expect(r.signal).toBeNull();
      expect([0, 77]).toContain(r.code); // 77 only if the lock outlived the 3 s deadline on a slow machine
    } finally {
      holder.stdin?.end();
      await new Promise((res) => (holder.exitCode !== null ? res(null) : holder.once("exit", res)));
    }
  });

  it("a FIFO in place of the policy is refused at once (78), nobody is asked", async () => {
    const { cmd, ran } = marking("fifo");
    allow(cmd);
    rmSync(inst.config);
    execFileSync("mkfifo", ["-m", "600", inst.config]);
    const r = await shim(["--", ...cmd], 15_000);
    expect(r.signal).toBeNull();
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/must be a regular file owned by root/);
    expect(asked()).toBe(false);
    expect(ran()).toBe(false);
    expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "config_insecure" })]);
  });

  it.each([
    ["the policy's directory is group-writable", () => dirname(inst.config), 0o775],
    ["a parent of the policy is world-writable", () => inst.etc, 0o777],
  ])("%s: refused (78) and audited, nobody is asked", async (_name, dir, mode) => {
    const { cmd, ran } = marking("pdir");
    allow(cmd);
    const r = await withMode(dir(), mode, () => shim(["--", ...cmd]));
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(
      `${dir()} must be a directory owned by root and writable only by root (or sticky)`,
    );
    expect(asked()).toBe(false);
    expect(ran()).toBe(false);
    expect(newAudit()).toEqual([
      expect.objectContaining({ decision: "deny", reason: "config_insecure", argv: cmd }),
    ]);
  });

  it("a sticky world-writable parent (like /tmp) is accepted: others cannot replace root's entries", async () => {
    const { cmd, ran } = marking("sticky");
    allow(cmd);
    const r = await withMode(inst.etc, 0o1777, () => shim(["--", ...cmd]));
    expect(r.code, r.stderr).toBe(0);
    expect(ran()).toBe(true);
  });

  it.each([
    ["in a group-writable directory", () => dirname(inst.auditLog), 0o770],
    ["under a world-writable parent", () => inst.var, 0o777],
  ])("an audit log %s: refused (78) before anyone is asked", async (_name, dir, mode) => {
    const { cmd, ran } = marking("adir");
    allow(cmd);
    const r = await withMode(dir(), mode, () => shim(["--", ...cmd]));
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(
      `${dir()} must be a directory owned by root and writable only by root (or sticky)`,
    );
    expect(asked()).toBe(false);
    expect(ran()).toBe(false);
    expect(newAudit()).toEqual([]); // a log others may swap is not written to (syslog has it)
  });

  it("an audit log with a second hard link is refused (78)", async () => {
    const { cmd, ran } = marking("link");
    allow(cmd);
    const other = join(dirname(inst.auditLog), "other");
    linkSync(inst.auditLog, other);
    try {
      const r = await shim(["--", ...cmd]);
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/the audit log .* must be a regular file owned by root/);
      expect(asked()).toBe(false);
      expect(ran()).toBe(false);
    } finally {
      unlinkSync(other);
    }
  });
});

describe("a consumed grant always has a line", () => {
  it("the shim killed while the verifier works (after consume): the attempt line is on disk", async () => {
    const { cmd, ran } = marking("killed");
    // The stand-in verifier blocks reading its verdict from this FIFO, as a verifier that consumed
    // the grant and has not answered yet.
    const verdict = join(stub, "verdict");
    execFileSync("mkfifo", ["-m", "666", verdict]);
    const child = spawnAsUser(user, [inst.shim, "--", ...cmd], { env: callerEnv(), cwd: home });
    const done = collect(child, { timeoutMs: 30_000 });
    const stdin = join(stub, "verify.stdin");
    for (let i = 0; i < 400 && !(existsSync(stdin) && readFileSync(stdin, "utf8").endsWith("}\n")); i++)
      await sleep(25);
    expect(existsSync(stdin)).toBe(true);
    process.kill(child.pid!, "SIGKILL"); // the shim itself (setpriv and env exec into it)
    // Lets a stand-in verifier that is reading the FIFO finish. Opened read-write without blocking:
    // the verifier may have died with the shim before it opened the FIFO, and a write-only open
    // would then wait for a reader forever.
    closeSync(openSync(verdict, constants.O_RDWR | constants.O_NONBLOCK));
    const r = await done;
    expect(r.signal).toBe("SIGKILL");
    expect(ran()).toBe(false);
    expect(newAudit()).toEqual([
      expect.objectContaining({
        decision: "attempt",
        reason: "",
        user: user.name,
        uid: user.uid,
        run_as: "root",
        argv: cmd,
        cmd_hash: cmdHash(cmd),
        pid: child.pid,
      }),
    ]);
  });
});

describe("a rotated audit log", () => {
  it("renamed while the verifier works: the outcome goes to the new file, the attempt stays in the old", async () => {
    const { cmd, ran } = marking("rotated");
    const verdict = join(stub, "verdict");
    execFileSync("mkfifo", ["-m", "666", verdict]);
    const child = spawnAsUser(user, [inst.shim, "--", ...cmd], { env: callerEnv(), cwd: home });
    const done = collect(child, { timeoutMs: 30_000 });
    const stdin = join(stub, "verify.stdin");
    for (let i = 0; i < 400 && !(existsSync(stdin) && readFileSync(stdin, "utf8").endsWith("}\n")); i++)
      await sleep(25);
    const rotated = `${inst.auditLog}.1`;
    renameSync(inst.auditLog, rotated); // logrotate without copytruncate
    try {
      const ok = { ok: true, grant_id: "grant-r", cmd_hash: cmdHash(cmd), run_as: "root" };
      writeFileSync(verdict, `${JSON.stringify(ok)}\n`);
      const r = await done;
      expect(r.code, r.stderr).toBe(0);
      expect(ran()).toBe(true);
      const old = readFileSync(rotated, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as AuditLine);
      expect(old.at(-1)).toMatchObject({ decision: "attempt", argv: cmd, pid: child.pid });
      expect(readAudit(inst)).toEqual([
        expect.objectContaining({ decision: "allow", grant_id: "grant-r", argv: cmd, pid: child.pid }),
      ]);
      const st = statSync(inst.auditLog);
      expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o600]);
    } finally {
      rmSync(rotated, { force: true });
    }
  });
});

describe("the audit log and the command's limits", () => {
  it("the audit log is created root:root 0600, and one with the caller's group is given back to root", async () => {
    const { cmd } = marking("owner");
    allow(cmd);
    const saved = readFileSync(inst.auditLog);
    try {
      rmSync(inst.auditLog);
      const r = await shim(["--", ...cmd]);
      expect(r.code, r.stderr).toBe(0);
      const st = statSync(inst.auditLog);
      expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o600]);
      chownSync(inst.auditLog, 0, user.gid);
      expect((await shim(["--", ...cmd])).code).toBe(0);
      expect(statSync(inst.auditLog).gid).toBe(0);
    } finally {
      writeFileSync(inst.auditLog, saved);
    }
  });

  it("the command never dumps core (RLIMIT_CORE 0) and gets the caller's other limits back", async () => {
    const cmd = ["/bin/bash", "-c", "echo $(ulimit -c) $(ulimit -n) $(ulimit -f)"]; // bash's units, as set
    allow(canonicalCommand(cmd)); // what the shim hashes: /usr/bin/bash where /bin links to usr/bin
    const r = await shimAfter("ulimit -c unlimited; ulimit -S -n 40; ulimit -S -f 100000", ["--", ...cmd]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("0 40 100000\n");
  });
});
