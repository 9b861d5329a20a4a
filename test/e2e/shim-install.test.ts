/**
 * The setuid shim as `make install` lays it out, with the REAL dist/apes as EXEC, run by a real
 * non-root user (apes-e2e): the install itself, the non-elevation path, and every refusal the shim
 * makes on its own before or without the TypeScript halves. The full approval flow (a logged-in
 * agent, `apes __request`/`apes __verify` against a real IdP) is tested by the full-flow e2e tests;
 * here the requester always fails (nobody is logged in), which checks that the shim fails closed.
 * Needs root (CI runs as root).
 */
import { execFile, execFileSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  ensureTestUser,
  ensureUser,
  installIntoTempPrefix,
  makeUserDir,
  REPO,
  readAudit,
  runAsUser,
  type ShimInstall,
  type UnixUser,
  VERIFY_USER,
  writeConfig,
} from "../helpers/shim.ts";

let inst: ShimInstall;
let user: UnixUser;
let verifier: UnixUser;
let home: string;
let out: string; // world-writable: markers written by whoever ran
let probe: string;
let auditMark = 0;

beforeAll(async () => {
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  verifier = ensureUser(VERIFY_USER, true);
  home = makeUserDir(user);
  out = mkdtempSync(join(tmpdir(), "apes-shim-out-"));
  chmodSync(out, 0o1777);
  // Loaded into every node process that honours NODE_OPTIONS: records its real and effective uid.
  probe = join(out, "probe.js");
  writeFileSync(
    probe,
    `require("fs").writeFileSync(${JSON.stringify(out)} + "/node." + process.getuid() + "." + process.geteuid() + "." + process.pid, process.argv.slice(2).join(" "));\n`,
    { mode: 0o644 },
  );
}, 120_000);

afterAll(async () => {
  await inst?.cleanup();
  rmSync(home, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
});

beforeEach(() => {
  for (const f of readdirSync(out))
    if (f !== "probe.js") rmSync(join(out, f), { recursive: true, force: true });
  rmSync(inst.config, { recursive: true, force: true });
  auditMark = readAudit(inst).length;
});

function env(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: "/usr/bin:/bin", HOME: home, LANG: "C.UTF-8", NODE_OPTIONS: `--require ${probe}`, ...extra };
}

function shim(args: string[], extra: Record<string, string> = {}, bin = inst.shim) {
  return runAsUser(user, [bin, ...args], { env: env(extra), cwd: home, timeoutMs: 60_000 });
}

/** The node processes that ran, as [uid, euid]. */
function nodeRuns(): Array<[number, number]> {
  return readdirSync(out)
    .map((f) => /^node\.(\d+)\.(\d+)\./.exec(f))
    .filter((m) => m !== null)
    .map((m) => [Number(m[1]), Number(m[2])]);
}

const marker = () => join(out, "ran-as-root");
const touchCmd = () => ["/usr/bin/touch", marker()];

function newAudit() {
  return readAudit(inst).slice(auditMark);
}

describe("make install", () => {
  it("lays out the shim setuid root, the executable, and the root-only directories", () => {
    const mode = (p: string) => statSync(p).mode & 0o7777;
    expect(mode(inst.shim)).toBe(0o4755);
    expect(statSync(inst.shim).uid).toBe(0);
    expect(statSync(inst.shim).gid).toBe(0);
    expect(mode(inst.exec)).toBe(0o755);
    expect(statSync(inst.exec).uid).toBe(0);
    expect(readFileSync(inst.exec).equals(readFileSync(join(REPO, "dist", "apes")))).toBe(true);
    expect(mode(join(inst.etc, "apes"))).toBe(0o755);
    expect(mode(join(inst.var, "log", "apes"))).toBe(0o700);
    expect(statSync(join(inst.var, "log", "apes")).uid).toBe(0);
    expect(mode(inst.cacheDir)).toBe(0o700);
    expect(statSync(inst.cacheDir).uid).toBe(verifier.uid);
  });

  it("builds the shim hardened: PIE, full RELRO, stack protector, FORTIFY_SOURCE, no executable stack", () => {
    const read = (flag: string) => execFileSync("readelf", ["-W", flag, inst.shim], { encoding: "utf8" });
    expect(read("-h")).toMatch(/Type:\s+DYN/);
    expect(read("-d")).toMatch(/BIND_NOW/);
    const segments = read("-l");
    expect(segments).toMatch(/GNU_RELRO/);
    expect(segments).toMatch(/GNU_STACK\s+(\S+\s+){5}RW\s/);
    const symbols = execFileSync("nm", ["-D", inst.shim], { encoding: "utf8" });
    expect(symbols).toMatch(/__stack_chk_fail/);
    expect(symbols).toMatch(/__\w+_chk@/);
  });

  it("with DESTDIR stages the files and leaves the user to the package", async () => {
    const dest = mkdtempSync(join(tmpdir(), "apes-destdir-"));
    try {
      const { stdout } = await promisify(execFile)(
        "make",
        ["-s", "-o", "build", "install", `DESTDIR=${dest}`, `NATIVE_OUT=${join(dest, ".build")}`],
        { cwd: REPO },
      );
      expect(stdout).toMatch(/DESTDIR set: create the _apes system user/);
      expect(statSync(join(dest, "usr/local/bin/apes")).mode & 0o7777).toBe(0o4755);
      expect(existsSync(join(dest, "usr/local/libexec/apes/apes"))).toBe(true);
      expect(statSync(join(dest, "var/log/apes")).mode & 0o777).toBe(0o700);
      expect(existsSync(join(dest, "var/cache/apes"))).toBe(true);
      expect(existsSync(join(dest, "etc/apes"))).toBe(true);
      await promisify(execFile)("make", ["-s", "uninstall", `DESTDIR=${dest}`], { cwd: REPO });
      expect(existsSync(join(dest, "usr/local/bin/apes"))).toBe(false);
      expect(existsSync(join(dest, "usr/local/libexec/apes/apes"))).toBe(false);
      expect(existsSync(join(dest, "var/log/apes"))).toBe(true); // the audit log stays
    } finally {
      rmSync(dest, { recursive: true, force: true });
    }
  });
});

describe("not an elevation", () => {
  it("runs the real apes as the caller, environment unchanged", async () => {
    const r = await shim(["--version"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^apes \d+\.\d+\.\d+/);
    // NODE_OPTIONS is the caller's own business here: it reached node, which ran as the caller.
    expect(nodeRuns()).toEqual([[user.uid, user.uid]]);
  });

  it("passes argv through to the CLI, which reports its own usage errors", async () => {
    const r = await shim(["no-such-command"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command/);
    expect(nodeRuns()).toEqual([[user.uid, user.uid]]);
    expect(newAudit()).toEqual([]);
  });
});

describe("refusals", () => {
  it("a shim that is not setuid root says so when asked to elevate, and still runs plain commands", async () => {
    const plain = join(inst.prefix, "bin", "apes-not-setuid");
    copyFileSync(inst.shim, plain);
    chmodSync(plain, 0o755);
    writeConfig(inst, "x = 1\n");
    const r = await shim(["--reason", "x", "--", ...touchCmd()], {}, plain);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/not installed setuid root.*sudo make install/);
    expect(existsSync(marker())).toBe(false);
    expect(nodeRuns()).toEqual([]);
    const v = await shim(["--version"], {}, plain);
    expect(v.code, v.stderr).toBe(0);
  });

  it.each([
    ["overlong", "\\xc0\\xaf"],
    ["surrogate", "\\xed\\xa0\\x80"],
    ["truncated", "abc\\xe2\\x82"],
    ["above U+10FFFF", "\\xf4\\x90\\x80\\x80"],
    ["lone continuation", "\\x80"],
  ])("argv with invalid UTF-8 (%s) is refused with exit 2, nothing runs", async (_name, bytes) => {
    writeConfig(inst, "x = 1\n");
    for (const where of ["command", "reason"]) {
      // JavaScript strings cannot carry these bytes: bash builds the argv.
      const script =
        where === "command"
          ? `exec "$0" --reason x -- /usr/bin/touch "$1" "$(printf '${bytes}')"`
          : `exec "$0" --reason "$(printf '${bytes}')" -- /usr/bin/touch "$1"`;
      const r = await runAsUser(user, ["/bin/bash", "-c", script, inst.shim, marker()], {
        env: env(),
        cwd: home,
      });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/not valid UTF-8/);
    }
    expect(existsSync(marker())).toBe(false);
    expect(nodeRuns()).toEqual([]);
    // Refusals are audited too, without the argv they refuse.
    const refused = {
      decision: "deny",
      reason: "argv_invalid_utf8",
      user: user.name,
      argv: [],
      cmd_hash: "",
    };
    expect(newAudit()).toEqual([expect.objectContaining(refused), expect.objectContaining(refused)]);
  });

  it.each([
    [
      "an argument over 32 KiB",
      ["/usr/bin/touch", "x".repeat(32 * 1024 + 1)],
      /longer than 32768 bytes/,
      "argv_arg_too_long",
    ],
    [
      "more than 4096 arguments",
      ["/usr/bin/touch", ...Array(4096).fill("x")],
      /more than 4096 arguments/,
      "argv_too_many",
    ],
    [
      "a command over 256 KiB",
      ["/usr/bin/touch", ...Array(9).fill("y".repeat(30 * 1024))],
      /longer than 262144/,
      "argv_too_long",
    ],
  ])("%s is refused with exit 2 and audited", async (_name, cmd, message, reason) => {
    writeConfig(inst, "x = 1\n");
    const r = await shim(["--", ...(cmd as string[])]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(nodeRuns()).toEqual([]);
    expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason, argv: [] })]);
  });

  it("an unknown --as user is refused with exit 2 and audited", async () => {
    writeConfig(inst, "x = 1\n");
    const r = await shim(["--as", "no-such-user-here", "--", ...touchCmd()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no such user: no-such-user-here/);
    expect(nodeRuns()).toEqual([]);
    expect(newAudit()).toEqual([
      expect.objectContaining({
        decision: "deny",
        reason: "run_as_unknown",
        run_as: "no-such-user-here",
        argv: touchCmd(),
      }),
    ]);
  });

  it("a missing policy is denied with 78 and audited, before anyone is asked", async () => {
    const r = await shim(["--reason", "x", "--", ...touchCmd()]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/no policy at .*config\.toml/);
    expect(existsSync(marker())).toBe(false);
    expect(nodeRuns()).toEqual([]); // the requester never started
    expect(newAudit()).toEqual([
      expect.objectContaining({
        decision: "deny",
        reason: "config_missing",
        user: user.name,
        argv: touchCmd(),
      }),
    ]);
  });

  const insecure: Array<[string, () => void]> = [
    ["group-writable", () => writeConfig(inst, "x = 1\n", { mode: 0o620 })],
    ["world-writable", () => writeConfig(inst, "x = 1\n", { mode: 0o606 })],
    ["owned by the caller", () => writeConfig(inst, "x = 1\n", { uid: user.uid, gid: user.gid })],
    [
      "a symlink",
      () => {
        const real = join(inst.etc, "apes", "real.toml");
        writeFileSync(real, "x = 1\n", { mode: 0o600 });
        symlinkSync(real, inst.config);
      },
    ],
    ["a directory", () => mkdirSync(inst.config, { mode: 0o700 })],
  ];
  it.each(insecure)("a policy file that is %s is denied with 78 and audited", async (_name, setup) => {
    setup();
    const r = await shim(["--", ...touchCmd()]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/must be a regular file owned by root, not group- or world-writable/);
    expect(existsSync(marker())).toBe(false);
    expect(nodeRuns()).toEqual([]);
    expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "config_insecure" })]);
  });

  it("an EXEC that root does not control is refused (78), for every command", async () => {
    chmodSync(inst.exec, 0o775);
    try {
      for (const args of [["--version"], ["--", ...touchCmd()]]) {
        const r = await shim(args);
        expect(r.code).toBe(78);
        expect(r.stderr).toMatch(/must be a regular file owned by root and not group- or world-writable/);
      }
      chmodSync(inst.exec, 0o755);
      chownSync(inst.exec, user.uid, 0);
      expect((await shim(["--version"])).code).toBe(78);
    } finally {
      chownSync(inst.exec, 0, 0);
      chmodSync(inst.exec, 0o755);
    }
    expect(nodeRuns()).toEqual([]);
  });
});

describe("fail closed when the approval request fails", () => {
  // With nobody logged in, the real `apes __request` (the colleague's TypeScript side; before it
  // exists, commander's "unknown command") exits with an error: the shim must run nothing.
  it("runs nothing, audits the requester's reason, and no caller-planted code runs privileged", async () => {
    writeConfig(inst, 'issuer = "https://idp.invalid"\n');
    const evil = join(out, "evil-bin");
    mkdirSync(evil);
    for (const name of ["node", "sh", "touch", "id", "apes"]) {
      writeFileSync(join(evil, name), `#!/bin/sh\n/usr/bin/touch ${out}/path-hijack.$(/usr/bin/id -u)\n`, {
        mode: 0o755,
      });
    }
    const r = await shim(["--reason", "x", "--timeout", "2s", "--", ...touchCmd()], {
      PATH: `${evil}:/usr/bin:/bin`,
      LD_PRELOAD: join(out, "missing.so"),
      APES_DEBUG: "1",
    });
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
    expect(r.stderr).toMatch(/not run: the approval request did not succeed/);
    expect(existsSync(marker())).toBe(false);
    // The requester ran, as the caller (its NODE_OPTIONS are the caller's own business) ...
    const runs = nodeRuns();
    expect(runs.length).toBeGreaterThan(0);
    // ... and nothing the caller planted ran as root or as the verifier.
    for (const [uid, euid] of runs) {
      expect(uid).toBe(user.uid);
      expect(euid).toBe(user.uid);
    }
    expect(
      readdirSync(out).filter((f) => f.startsWith("path-hijack.0") || f.endsWith(`.${verifier.uid}`)),
    ).toEqual([]);
    expect(newAudit()).toEqual([
      expect.objectContaining({
        decision: "deny",
        // Nobody is logged in: the requester reports not_permitted, audited under its prefix.
        reason: "requester_not_permitted",
        user: user.name,
        argv: touchCmd(),
      }),
    ]);
  });
});

describe("the requester's own reason", () => {
  it("is audited once prefixed: a broken auth.json is requester_config", async () => {
    writeConfig(inst, 'issuer = "https://idp.invalid"\n');
    const cfg = join(home, ".config", "apes");
    mkdirSync(cfg, { recursive: true });
    writeFileSync(join(cfg, "auth.json"), "not json\n", { mode: 0o600 });
    execFileSync("chown", ["-R", `${user.uid}:${user.gid}`, join(home, ".config")]);
    try {
      const r = await shim(["--reason", "x", "--", ...touchCmd()]);
      expect(r.code, r.stderr).toBe(78);
      expect(existsSync(marker())).toBe(false);
      expect(newAudit()).toEqual([expect.objectContaining({ decision: "deny", reason: "requester_config" })]);
    } finally {
      rmSync(join(home, ".config"), { recursive: true, force: true });
    }
  });
});

describe("make uninstall", () => {
  it("removes the programs and keeps policy, audit log and cache", async () => {
    const t = await installIntoTempPrefix();
    try {
      writeConfig(t, "x = 1\n");
      await promisify(execFile)(
        "make",
        ["-s", "uninstall", `PREFIX=${t.prefix}`, `SYSCONFDIR=${t.etc}`, `LOCALSTATEDIR=${t.var}`],
        { cwd: REPO },
      );
      expect(existsSync(t.shim)).toBe(false);
      expect(existsSync(t.exec)).toBe(false);
      expect(existsSync(t.config)).toBe(true);
      expect(existsSync(t.cacheDir)).toBe(true);
      expect(execFileSync("getent", ["passwd", VERIFY_USER], { encoding: "utf8" })).toMatch(/^_apes:/);
    } finally {
      await t.cleanup();
    }
  });
});
