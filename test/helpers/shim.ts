/**
 * Helpers for tests of the setuid shim (native/): install the real thing (a setuid-root binary
 * built for a temporary PREFIX, the real dist/apes as EXEC) and run it as a real non-root user.
 * These tests need root (CI runs as root); the installs live under a mkdtemp directory each.
 *
 *   const inst = await installIntoTempPrefix();   // afterAll: await inst.cleanup()
 *   const user = ensureTestUser();                   // "apes-e2e", created when missing
 *   const home = makeUserDir(user);                  // a HOME the user owns
 *   writeConfig(inst, policyToml);                   // root:root 0600, as `apes trust` writes it
 *   const r = await runAsUser(user, [inst.shim, "--reason", "r", "--", "/usr/bin/id"], {
 *     env: { PATH: "/usr/bin:/bin", HOME: home },    // the COMPLETE environment of the program
 *   });                                              // -> { code, signal, stdout, stderr }
 *   readAudit(inst)                                  // the audit log, parsed
 * installStubExec(inst) swaps EXEC for a recording stand-in of `__request`/`__verify` (shim-only tests).
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { READY_LINE } from "../../protocol/elevation.ts";
import { collect, type RunResult } from "./process.ts";

export { collect, type RunResult };

const execFileP = promisify(execFile);
export const REPO = join(import.meta.dirname, "..", "..");
export const DIST_APES = join(REPO, "dist", "apes");
/** The non-root user the e2e tests act as (created when missing). */
export const TEST_USER = "apes-e2e";
export const VERIFY_USER = "_apes";

export interface UnixUser {
  name: string;
  uid: number;
  gid: number;
}

export interface ShimInstall {
  /** The mkdtemp directory everything lives in (mode 0755 so other users can traverse it). */
  root: string;
  prefix: string;
  etc: string;
  var: string;
  /** $(PREFIX)/bin/apes, the setuid-root shim. */
  shim: string;
  /** $(PREFIX)/libexec/apes/apes, the executable the shim trusts. */
  exec: string;
  /** $(SYSCONFDIR)/apes/config.toml (not created by the install). */
  config: string;
  auditLog: string;
  cacheDir: string;
  /** $(LOCALSTATEDIR)/lib/apes: root's 0700 directory of the per-user early-verifier slots. */
  slotDir: string;
  /** Where the shim was built (test-hash is there too). */
  buildDir: string;
  cleanup(): Promise<void>;
}

function lookupUser(name: string): UnixUser | undefined {
  try {
    const line = execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim();
    const f = line.split(":");
    return { name, uid: Number(f[2]), gid: Number(f[3]) };
  } catch {
    return undefined;
  }
}

/**
 * Creates the user when missing: idempotent, and tolerant of a concurrent creation (parallel test
 * files): useradd fails while another holds the passwd lock, so it is retried a few times.
 */
export function ensureUser(name: string, system = false): UnixUser {
  const home = system ? "/var/cache/apes" : "/nonexistent";
  const args = [
    ...(system ? ["--system"] : []),
    "--user-group",
    "--no-create-home",
    "--shell",
    "/usr/sbin/nologin",
    "--home-dir",
    home,
    name,
  ];
  for (let attempt = 0; ; attempt++) {
    const found = lookupUser(name);
    if (found) return found;
    try {
      execFileSync("useradd", args, { stdio: ["ignore", "ignore", "pipe"] });
    } catch (e) {
      if (attempt >= 20) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100); // the lock holder finishes
    }
  }
}

export function ensureTestUser(name = TEST_USER): UnixUser {
  return ensureUser(name);
}

/**
 * `make install` into a fresh temporary PREFIX/SYSCONFDIR/LOCALSTATEDIR (dist/apes must be built:
 * the global setup checks it; `-o build` keeps make from rebuilding it). The shim is compiled with
 * these paths and installed 4755 root:root, so it is a real setuid binary. `earlyIdleMs`: how long
 * an early verifier may wait for READY (the Makefile's EARLY_IDLE_MS; default 10 min).
 */
export async function installIntoTempPrefix(opts: { earlyIdleMs?: number } = {}): Promise<ShimInstall> {
  if (process.getuid?.() !== 0) throw new Error("installing the setuid shim needs root");
  if (!existsSync(DIST_APES)) throw new Error(`${DIST_APES} is missing: run \`make build\``);
  // The system user the verifier runs as; created here first so `make install` does not give it
  // a temporary home directory.
  ensureUser(VERIFY_USER, true);
  const root = mkdtempSync(join(tmpdir(), "apes-shim-"));
  chmodSync(root, 0o755);
  const prefix = join(root, "usr");
  const etc = join(root, "etc");
  const varDir = join(root, "var");
  const buildDir = join(root, "build");
  await execFileP(
    "make",
    [
      "-s",
      "-o",
      "build",
      "install",
      `PREFIX=${prefix}`,
      `SYSCONFDIR=${etc}`,
      `LOCALSTATEDIR=${varDir}`,
      `NATIVE_OUT=${buildDir}`,
      ...(opts.earlyIdleMs === undefined ? [] : [`EARLY_IDLE_MS=${opts.earlyIdleMs}`]),
    ],
    { cwd: REPO, maxBuffer: 16 << 20 },
  );
  return {
    root,
    prefix,
    etc,
    var: varDir,
    shim: join(prefix, "bin", "apes"),
    exec: join(prefix, "libexec", "apes", "apes"),
    config: join(etc, "apes", "config.toml"),
    auditLog: join(varDir, "log", "apes", "audit.log"),
    cacheDir: join(varDir, "cache", "apes"),
    slotDir: join(varDir, "lib", "apes"),
    buildDir,
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
}

/** Writes the policy file as `apes trust` would (root:root 0600 unless told otherwise). */
export function writeConfig(
  inst: Pick<ShimInstall, "config">,
  text: string,
  opts: { mode?: number; uid?: number; gid?: number } = {},
): void {
  writeFileSync(inst.config, text);
  chownSync(inst.config, opts.uid ?? 0, opts.gid ?? 0);
  chmodSync(inst.config, opts.mode ?? 0o600);
}

export interface AuditLine {
  ts: number;
  /** attempt: written before the verifier may consume the grant; allow/deny/pending: the outcome. */
  decision: "attempt" | "allow" | "deny" | "pending";
  reason: string;
  user: string;
  uid: number;
  run_as: string;
  argv: string[];
  cmd_hash: string;
  grant_id: string;
  sub: string;
  decided_by: string;
  issuer: string;
  pid: number;
}

export function readAudit(inst: ShimInstall): AuditLine[] {
  if (!existsSync(inst.auditLog)) return [];
  return readFileSync(inst.auditLog, "utf8")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as AuditLine);
}

/** A fresh directory owned by the user (mode 0700), e.g. for its HOME. */
export function makeUserDir(user: UnixUser, parent = tmpdir()): string {
  const dir = mkdtempSync(join(parent, `apes-${user.name}-`));
  chownSync(dir, user.uid, user.gid);
  chmodSync(dir, 0o700);
  return dir;
}

export interface RunOptions {
  /** The complete environment (nothing is inherited from the test process). */
  env?: Record<string, string>;
  input?: string | Buffer;
  timeoutMs?: number;
  cwd?: string;
}

/**
 * Starts argv as the user: setpriv sets real+effective uid/gid and the user's groups (no
 * privileges left), then `env -i` installs opts.env. The environment is applied only after the
 * drop, so variables like LD_PRELOAD meant for the program under test never touch setpriv (root).
 */
export function spawnAsUser(who: UnixUser | string, argv: string[], opts: RunOptions = {}): ChildProcess {
  const user = typeof who === "string" ? lookupUser(who) : who;
  if (!user) throw new Error(`no such user: ${String(who)}`);
  const [file, ...rest] = argv;
  if (!file?.startsWith("/")) throw new Error(`spawnAsUser needs an absolute path, got ${file}`);
  const env = opts.env ?? { PATH: "/usr/bin:/bin" };
  const assignments = Object.entries(env).map(([k, v]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`odd environment variable name ${k}`);
    return `${k}=${v}`;
  });
  return spawn(
    "/usr/bin/setpriv",
    [
      "--reuid",
      String(user.uid),
      "--regid",
      String(user.gid),
      "--init-groups",
      "--",
      "/usr/bin/env",
      "-i",
      ...assignments,
      file,
      ...rest,
    ],
    { env: { PATH: "/usr/bin:/bin" }, cwd: opts.cwd ?? "/", stdio: ["pipe", "pipe", "pipe"] },
  );
}

/** Runs argv as the user and collects its output; killed (SIGKILL) after timeoutMs (default 20 s). */
export function runAsUser(
  user: UnixUser | string,
  argv: string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const child = spawnAsUser(user, argv, opts);
  return collect(child, opts);
}

/**
 * Replaces EXEC with a small stand-in for the TypeScript halves (`__request`, `__verify`) so the
 * shim's own privilege handling can be tested end to end without an IdP. It records what it saw
 * into `dir` (mode 1777) and answers as the files there say:
 *   request.mode   token (default: write the file `token` to fd 3, exit 0) | sleep | exit:N | garbage
 *                  | reason:N:TEXT (write TEXT to fd 3, exit N: a failing requester's reason code)
 *   verdict        what __verify prints on stdout;  verify.exit  its exit status (default 0)
 * and records request.{pid,uid,groups,argv,environ,fd3,fds}, verify.{pid,uid,groups,cwd,environ,fds,config,
 * stdin}, plain.{uid,argv}. Its path names are baked in because the verifier's environment is fixed.
 */
/**
 * Whether the stand-in verifier of installStubExec was given a request line (a token). The shim starts
 * the verifier when the requester says "ready", before the token, so that it ran says nothing: what
 * it was sent is what matters.
 */
export function stubVerifierGotRequest(stubDir: string): boolean {
  try {
    return readFileSync(join(stubDir, "verify.stdin"), "utf8") !== "";
  } catch {
    return false;
  }
}

/** The token in what `apes __request` wrote to its result fd: the "ready" line must come first. */
export function tokenAfterReady(result: string): string {
  if (!result.startsWith(READY_LINE))
    throw new Error(`no ready line before the token: ${JSON.stringify(result.slice(0, 20))}`);
  return result.slice(READY_LINE.length);
}

/** How many stand-in verifiers of installStubExec got as far as recording their start. */
export function stubVerifierStarts(stubDir: string): number {
  try {
    return readFileSync(join(stubDir, "verify.starts"), "utf8").split("\n").filter(Boolean).length;
  } catch {
    return 0;
  }
}

export function installStubExec(inst: ShimInstall): string {
  const dir = join(inst.root, "stub");
  execFileSync("mkdir", ["-p", dir]);
  chmodSync(dir, 0o1777);
  const q = `'${dir}'`;
  const script = `#!/bin/sh
S=${q}
case "$1" in
__request)
  echo $$ > "$S/request.pid"
  /usr/bin/id -u > "$S/request.uid"; /usr/bin/id -G > "$S/request.groups"
  printf '%s\\0' "$@" > "$S/request.argv"
  /bin/cat /proc/$$/environ > "$S/request.environ"
  if { true >&3; } 2>/dev/null; then echo open > "$S/request.fd3"; fi
  /bin/ls -l /proc/self/fd > "$S/request.fds"
  mode=$(/bin/cat "$S/request.mode" 2>/dev/null || echo token)
  # slow+MODE: MODE after 3 s (longer than the short idle budget the kill-path tests build with).
  case "$mode" in slow+*) /bin/sleep 3; mode=\${mode#slow+} ;; esac
  # ready+MODE: the approved-grant marker first (each ready+ one more), then MODE.
  while case "$mode" in ready+*) true ;; *) false ;; esac; do printf 'ready\n' >&3; mode=\${mode#ready+}; done
  case "$mode" in
  token) /bin/cat "$S/token" >&3; exit 0 ;;
  # token+exit:N: the token, the pipe closed, then exit N 0.3 s later (marked in request.exited).
  token+exit:*) /bin/cat "$S/token" >&3; exec 3>&-; /bin/sleep 0.3; echo > "$S/request.exited"; exit "\${mode#token+exit:}" ;;
  sleep) echo sleeping > "$S/request.sleeping"; exec /bin/sleep 120 3>&- ;;
  wait) echo sleeping > "$S/request.sleeping"; exec /bin/sleep 120 ;;
  hold) exec /bin/sleep 120 </dev/null >/dev/null 2>&1 ;;
  linger) exec /bin/sleep 120 3>&- </dev/null >/dev/null 2>&1 ;;
  garbage) printf 'not a token!' >&3; exit 0 ;;
  exit:*) exit "\${mode#exit:}" ;;
  reason:*) r=\${mode#reason:}; printf '%s' "\${r#*:}" >&3; exit "\${r%%:*}" ;;
  esac
  exit 1 ;;
__verify)
  echo $$ > "$S/verify.pid"; echo $$ >> "$S/verify.starts"
  /usr/bin/id -u > "$S/verify.uid"; /usr/bin/id -G > "$S/verify.groups"; pwd > "$S/verify.cwd"
  /bin/cat /proc/$$/environ > "$S/verify.environ"
  /bin/ls -l /proc/self/fd > "$S/verify.fds"
  /bin/cat <&3 > "$S/verify.config"
  /bin/cat > "$S/verify.stdin"
  [ -e "$S/request.exited" ] || echo yes > "$S/verify.before-requester-exit"
  /bin/cat "$S/verdict" 2>/dev/null
  exit "$(/bin/cat "$S/verify.exit" 2>/dev/null || echo 0)" ;;
*)
  /usr/bin/id -u > "$S/plain.uid"; printf '%s\\0' "$@" > "$S/plain.argv"; exit 0 ;;
esac
`;
  writeFileSync(inst.exec, script);
  chownSync(inst.exec, 0, 0);
  chmodSync(inst.exec, 0o755);
  return dir;
}
