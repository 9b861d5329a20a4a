import type { StoredSession } from "../../client/session-store.ts";
import { visible } from "../../protocol/display.ts";
import { CLOCK_SKEW_S } from "../../protocol/jwt.ts";
import type { InstalledPaths } from "../elevation/paths.ts";

/**
 * `apes doctor`: what an admin checks when elevation or login fails, one result per check. The
 * decisions (ok / warn / fail, the detail and the fix) are pure functions of facts; `runDoctor`
 * gathers the facts through an injected DoctorEnv (cli/doctor/env.ts is the real one), so every
 * check runs in unit tests against fakes. Everything that came from outside (file contents, IdP
 * answers, DNS) reaches a detail only through visible().
 */

export type Status = "ok" | "warn" | "fail";

export interface CheckResult {
  check: string;
  status: Status;
  detail: string;
  /** A command (or the step) that fixes a warn or fail. */
  fix?: string;
}

export interface FileInfo {
  uid: number;
  gid: number;
  mode: number;
  /** Hard links (the shim refuses an audit log with more than one). */
  nlink?: number;
  isFile: boolean;
  isDirectory: boolean;
  isSymbolicLink: boolean;
  isSocket?: boolean;
}

export interface HttpAnswer {
  status: number;
  body: unknown;
  /** The Date header, as sent. */
  date?: string;
  /** Local time (ms) when the answer arrived. */
  receivedAtMs: number;
}

/** Where a TLS connection's trust comes from: the policy's pinned CA, or the user's settings. */
export type Trust = { pinnedCa: string } | "user";

export interface DdisaAnswer {
  name: string;
  /** The record discovery would choose. */
  selected?: { idp: string; mode: string };
}

/** What the checks may ask of the system. */
export interface DoctorEnv {
  uid: number;
  paths: InstalledPaths;
  nowMs(): number;
  hostname(): string;
  /** undefined when the path does not exist; other errors throw. */
  lstat(path: string): Promise<FileInfo | undefined>;
  /** Throws the errno error (ENOENT, EACCES, ...). */
  readFile(path: string): Promise<string>;
  /** The policy's pinned CA (PEM) by the verifier's own rules, undefined when none; throws when refused. */
  pinnedCa(policy: import("../../verifier/policy.ts").Policy): Promise<string | undefined>;
  lookupUser(name: string): Promise<{ uid: number; gid: number } | undefined>;
  /** GET url (JSON), bounded in time and size; throws when there is no HTTP answer. */
  get(url: string, trust: Trust): Promise<HttpAnswer>;
  /** auth.json of the user running doctor. */
  authFile: string;
  /** The parsed session; undefined when absent; throws (with a message) when broken. */
  session(): Promise<StoredSession | undefined>;
  /** The fingerprint (SHA256:...) of the private key at path; throws when unusable. */
  keyFingerprint(path: string): Promise<string>;
  /** The idp configured in config.toml / APES_IDP (login then skips DNS). */
  configuredIdp(): Promise<string | undefined>;
  /** DDISA discovery for an email's domain; throws when DNS cannot be asked. */
  ddisa(email: string): Promise<DdisaAnswer>;
}

/** The verifier's system user (Makefile install, the Debian package's postinst). */
export const VERIFIER_USER = "_apes";
/** Beyond this the clock is said to drift (a warning); beyond CLOCK_SKEW_S tokens are refused. */
export const SKEW_WARN_S = CLOCK_SKEW_S / 2;

const v = (text: unknown) => visible(String(text), { max: 300 });
const octal = (mode: number) => (mode & 0o7777).toString(8).padStart(4, "0");
const ok = (check: string, detail: string): CheckResult => ({ check, status: "ok", detail });
const warn = (check: string, detail: string, fix: string): CheckResult => ({
  check,
  status: "warn",
  detail,
  fix,
});
const fail = (check: string, detail: string, fix: string): CheckResult => ({
  check,
  status: "fail",
  detail,
  fix,
});

export function shimPath(paths: InstalledPaths): string {
  return `${paths.prefix}/bin/apes`;
}
export function execPath(paths: InstalledPaths): string {
  return `${paths.prefix}/libexec/apes/apes`;
}

// --- the installation -------------------------------------------------------------------------

/** The setuid shim: root-owned, setuid, not writable by group or others (4755 as installed). */
export function decideShim(path: string, info: FileInfo | undefined, installed: boolean): CheckResult {
  const reinstall = "sudo make install (or reinstall the apes package)";
  if (!info) {
    return installed
      ? fail("shim", `${path} is missing: elevation cannot work`, reinstall)
      : warn("shim", `${path} is not installed: \`apes -- cmd\` is not available here`, reinstall);
  }
  if (info.isSymbolicLink || !info.isFile) return fail("shim", `${path} is not a regular file`, reinstall);
  if (info.uid !== 0)
    return fail("shim", `${path} is owned by uid ${info.uid}, not root`, `sudo chown root:root ${path}`);
  if ((info.mode & 0o4000) === 0)
    return fail(
      "shim",
      `${path} is not setuid (mode ${octal(info.mode)}): elevation cannot switch users`,
      `sudo chmod 4755 ${path}`,
    );
  if ((info.mode & 0o022) !== 0)
    return fail(
      "shim",
      `${path} is writable by group or others (mode ${octal(info.mode)})`,
      `sudo chmod 4755 ${path}`,
    );
  return ok("shim", `${path}: setuid root, mode ${octal(info.mode)}`);
}

/** The executable the shim trusts, and its directory: the shim's own rule (root, no group/world write). */
export function decideExec(
  path: string,
  info: FileInfo | undefined,
  dir: string,
  dirInfo: FileInfo | undefined,
): CheckResult {
  const reinstall = "sudo make install (or reinstall the apes package)";
  for (const [p, st, kind] of [
    [dir, dirInfo, "directory"],
    [path, info, "file"],
  ] as const) {
    if (!st) return fail("executable", `${p} is missing`, reinstall);
    if (kind === "file" ? st.isSymbolicLink || !st.isFile : !st.isDirectory)
      return fail("executable", `${p} is not a regular ${kind}`, reinstall);
    if (st.uid !== 0)
      return fail(
        "executable",
        `${p} is owned by uid ${st.uid}, not root: the shim refuses it`,
        `sudo chown root:root ${p}`,
      );
    if ((st.mode & 0o022) !== 0)
      return fail(
        "executable",
        `${p} is writable by group or others (mode ${octal(st.mode)}): the shim refuses it`,
        `sudo chmod go-w ${p}`,
      );
  }
  if (((info as FileInfo).mode & 0o111) === 0)
    return fail("executable", `${path} is not executable`, `sudo chmod 755 ${path}`);
  return ok("executable", `${path}: root, mode ${octal((info as FileInfo).mode)}`);
}

export function decideVerifierUser(
  user: { uid: number; gid: number } | undefined,
  cacheDir: string,
  cache: FileInfo | undefined,
): CheckResult[] {
  if (!user) {
    return [
      fail(
        "verifier-user",
        `the system user ${VERIFIER_USER} (the verifier runs as it) does not exist`,
        `sudo useradd --system --user-group --no-create-home --shell /usr/sbin/nologin --home-dir ${cacheDir} ${VERIFIER_USER}`,
      ),
    ];
  }
  const fixCache = `sudo install -d -m 0700 -o ${VERIFIER_USER} -g ${VERIFIER_USER} ${cacheDir}`;
  let cacheResult: CheckResult;
  if (!cache?.isDirectory)
    cacheResult = warn("cache-dir", `${cacheDir} is missing: the verifier fetches keys every time`, fixCache);
  else if (cache.uid !== user.uid || (cache.mode & 0o077) !== 0)
    cacheResult = warn(
      "cache-dir",
      `${cacheDir} should be ${VERIFIER_USER}'s own, mode 0700 (uid ${cache.uid}, mode ${octal(cache.mode)})`,
      fixCache,
    );
  else cacheResult = ok("cache-dir", `${cacheDir}: ${VERIFIER_USER}, mode ${octal(cache.mode)}`);
  return [ok("verifier-user", `${VERIFIER_USER} exists (uid ${user.uid})`), cacheResult];
}

/**
 * The resident verifier (`apes verifier serve`, optional): its socket in the cache directory, which
 * only root can look into. Its absence is fine (one-shot verifiers); a socket that is not _apes's is
 * ignored by the shim, and said here.
 */
export function decideResidentVerifier(
  socket: string,
  info: FileInfo | undefined,
  verifierUid: number | undefined,
): CheckResult {
  if (!info)
    return ok(
      "verifier-svc",
      `not running (no ${socket}): each elevation starts its own verifier; for faster elevations: sudo make install-verifier-service && sudo systemctl enable --now apes-verifier`,
    );
  if (!info.isSocket || info.uid !== verifierUid)
    return warn(
      "verifier-svc",
      `${socket} is not a socket of ${VERIFIER_USER} (uid ${info.uid}): the shim ignores it`,
      `sudo rm ${socket}`,
    );
  return ok("verifier-svc", `${socket}: elevations go to the resident verifier while it answers`);
}

/**
 * The audit log: the shim refuses to run anything it cannot log, and it only appends to a
 * root-owned regular file. Its directory is root-only (0700), so a user sees the directory alone.
 */
export function decideAuditLog(
  dir: string,
  dirInfo: FileInfo | undefined,
  file: string,
  fileInfo: FileInfo | undefined,
  asRoot: boolean,
): CheckResult {
  const fixDir = `sudo install -d -m 0700 -o root -g root ${dir}`;
  if (!dirInfo?.isDirectory)
    return fail("audit-log", `${dir} is missing: the shim denies every elevation it cannot log`, fixDir);
  if (dirInfo.uid !== 0 || (dirInfo.mode & 0o022) !== 0)
    return fail(
      "audit-log",
      `${dir} must be root's and not writable by others (uid ${dirInfo.uid}, mode ${octal(dirInfo.mode)})`,
      fixDir,
    );
  if (!asRoot)
    return ok("audit-log", `${dir}: root, mode ${octal(dirInfo.mode)} (the log itself: sudo apes doctor)`);
  if (!fileInfo) return ok("audit-log", `${file}: nothing logged yet`);
  const fixFile = `sudo chown root:root ${file} && sudo chmod 600 ${file}`;
  if (fileInfo.isSymbolicLink || !fileInfo.isFile || fileInfo.uid !== 0)
    return fail(
      "audit-log",
      `${file} is not a root-owned regular file: the shim denies every elevation`,
      fixFile,
    );
  if ((fileInfo.nlink ?? 1) > 1)
    return fail(
      "audit-log",
      `${file} has ${fileInfo.nlink} hard links: the shim denies every elevation`,
      `sudo mv ${file} ${file}.linked (the shim creates a new one)`,
    );
  if ((fileInfo.mode & 0o077) !== 0)
    return warn("audit-log", `${file} is readable by others (mode ${octal(fileInfo.mode)})`, fixFile);
  return ok("audit-log", `${file}: root, mode ${octal(fileInfo.mode)}`);
}

/**
 * The shim trusts the policy and the audit log only below directories that are root's and writable
 * by no one else (sticky ones such as /tmp excepted): native/secure.c parents_trusted, whose rule is
 * verifier/policy.ts trustedDirectoryProblem. The first directory that breaks it, or undefined.
 */
export interface UntrustedDirectory {
  dir: string;
  problem: string;
}

export async function untrustedParent(env: DoctorEnv, path: string): Promise<UntrustedDirectory | undefined> {
  const { trustedDirectoryProblem } = await import("../../verifier/policy.ts");
  const parts = path.split("/").slice(1, -1);
  for (let i = 0; i <= parts.length; i++) {
    const dir = `/${parts.slice(0, i).join("/")}`;
    const st = await env.lstat(dir);
    if (!st) return { dir, problem: "is missing" };
    if (st.isSymbolicLink) return { dir, problem: "is a symbolic link" };
    const problem = trustedDirectoryProblem({ uid: st.uid, mode: st.mode, isDirectory: st.isDirectory }, 0);
    if (problem) return { dir, problem };
  }
  return undefined;
}

export function decideDirectories(
  found: readonly [file: string, untrusted: UntrustedDirectory | undefined][],
): CheckResult {
  const bad = found.find(([, u]) => u !== undefined);
  if (!bad)
    return ok("directories", `every directory above ${found.map(([f]) => f).join(" and ")} is root's alone`);
  const [file, { dir, problem }] = bad as [string, UntrustedDirectory];
  return fail(
    "directories",
    `the shim refuses ${file}: ${dir} ${problem}`,
    problem === "is missing"
      ? "sudo make install (or reinstall the apes package)"
      : `sudo chown root:root ${dir} && sudo chmod go-w ${dir}`,
  );
}

// --- the policy ---------------------------------------------------------------------------------

/** root:root 0600, as `apes trust` writes it; group/world-writable or not root's is refused by the shim. */
export function decidePolicyFile(path: string, info: FileInfo | undefined): CheckResult {
  const fixMode = `sudo chown root:root ${path} && sudo chmod 600 ${path}`;
  if (!info)
    return fail(
      "policy-file",
      `no elevation policy at ${path}`,
      "sudo apes trust --idp URL --approvers you@example.com --map USER=agent@example.com",
    );
  if (info.isSymbolicLink || !info.isFile)
    return fail("policy-file", `${path} is not a regular file`, "rewrite it with `sudo apes trust ...`");
  if (info.uid !== 0)
    return fail("policy-file", `${path} is owned by uid ${info.uid}, not root: the shim refuses it`, fixMode);
  if ((info.mode & 0o022) !== 0)
    return fail(
      "policy-file",
      `${path} is writable by group or others (mode ${octal(info.mode)}): the shim refuses it`,
      fixMode,
    );
  if ((info.mode & 0o7777) !== 0o600)
    return fail(
      "policy-file",
      `${path} has mode ${octal(info.mode)}, not 0600: other users can read who may approve what`,
      fixMode,
    );
  return ok("policy-file", `${path}: root, mode 0600`);
}

// --- the IdP --------------------------------------------------------------------------------------

/** The IdP's Date header against the local clock at arrival (the header has whole seconds). */
export function decideClock(origin: string, answer: HttpAnswer): CheckResult {
  const date = answer.date === undefined ? Number.NaN : Date.parse(answer.date);
  if (Number.isNaN(date))
    return warn(
      "clock",
      `${origin} sent no usable Date header${answer.date ? ` (${v(answer.date)})` : ""}: skew unknown`,
      "compare `date -u` with the IdP host's clock",
    );
  const skewS = Math.round((answer.receivedAtMs - date) / 1000);
  const says = `this machine's clock is ${Math.abs(skewS)} s ${skewS >= 0 ? "ahead of" : "behind"} ${origin}`;
  const fix = "sync the clocks with NTP: timedatectl set-ntp true (on both machines)";
  if (Math.abs(skewS) > CLOCK_SKEW_S)
    return fail("clock", `${says}: tokens are refused beyond ${CLOCK_SKEW_S} s`, fix);
  if (Math.abs(skewS) > SKEW_WARN_S)
    return warn("clock", `${says} (tokens are refused beyond ${CLOCK_SKEW_S} s)`, fix);
  return ok("clock", `within ${Math.max(1, Math.abs(skewS))} s of ${origin}`);
}

/** The IdP's discovery document and JWKS, by the rules the verifier applies (protocol/jwks.ts). */
export async function checkIdp(env: DoctorEnv, issuer: string, trust: Trust): Promise<CheckResult[]> {
  const { fetchIssuerKeys } = await import("../../protocol/jwks.ts");
  const pinned = trust !== "user";
  let first: HttpAnswer | undefined;
  let reachError: string | undefined;
  const getJson = async (url: string) => {
    try {
      const a = await env.get(url, trust);
      first ??= a;
      return a;
    } catch (e) {
      reachError ??= (e as Error).message;
      throw e;
    }
  };
  const results: CheckResult[] = [];
  let keysError: string | undefined;
  let edKeys = 0;
  try {
    const meta = await fetchIssuerKeys(getJson, issuer, pinned ? "pinned" : "user", env.nowMs() / 1000);
    edKeys = meta.keys.filter((k) => k.kty === "OKP" && k.crv === "Ed25519").length;
    if (edKeys === 0) keysError = `${meta.jwksUri} publishes no Ed25519 key`;
  } catch (e) {
    keysError = (e as Error).message;
  }
  const via = pinned ? " (through the policy's pinned CA)" : "";
  if (!first) {
    const tlsHint = pinned
      ? "a pinned CA: sudo apes trust ... --ca-file CA.pem"
      : "a private CA: set ca_file in config.toml";
    results.push(
      fail(
        "idp",
        `${v(issuer)} is unreachable${via}: ${v(reachError ?? keysError)}`,
        `start the IdP or fix the URL; for TLS errors check ${tlsHint}`,
      ),
    );
    return results;
  }
  results.push(ok("idp", `${v(issuer)} answers${via}`));
  results.push(
    keysError
      ? fail(
          "jwks",
          `${v(issuer)}: ${v(keysError)}`,
          pinned
            ? "check the issuer URL in the policy (`sudo apes trust --show`) and the IdP's --issuer"
            : "check the IdP's --issuer and its /.well-known/openid-configuration",
        )
      : ok(
          "jwks",
          `${v(issuer)}: discovery names this issuer; ${edKeys} Ed25519 key${edKeys > 1 ? "s" : ""}`,
        ),
  );
  results.push(decideClock(v(new URL(issuer).origin), first));
  return results;
}

// --- the user's session ---------------------------------------------------------------------------

export function decideSessionFile(path: string, info: FileInfo, uid: number): CheckResult {
  if (info.isSymbolicLink || !info.isFile)
    return fail("session-file", `${path} is not a regular file`, "apes logout && apes login EMAIL");
  if (info.uid !== uid)
    return fail("session-file", `${path} is owned by uid ${info.uid}, not you (uid ${uid})`, `rm ${path}`);
  if ((info.mode & 0o077) !== 0)
    return fail(
      "session-file",
      `${path} has mode ${octal(info.mode)}: others can read your token`,
      `chmod 600 ${path}`,
    );
  return ok("session-file", `${path}: yours, mode ${octal(info.mode)}`);
}

export function decideToken(s: StoredSession, nowS: number): CheckResult {
  const at = new Date(s.expires_at * 1000).toISOString().replace(".000Z", "Z");
  const left = s.expires_at - nowS;
  if (left > 0) return ok("token", `${v(s.email)}: valid until ${at} (${Math.ceil(left / 60)} min left)`);
  if (s.key_path)
    return ok("token", `${v(s.email)}: expired at ${at}; renewed from the key on the next command`);
  return fail(
    "token",
    `${v(s.email)}: expired at ${at}, and no key to renew it with`,
    `apes login ${v(s.email)}`,
  );
}

export function decideKey(
  s: StoredSession,
  info: FileInfo | undefined,
  actual: { fingerprint?: string; error?: string },
): CheckResult {
  if (!s.key_path) return ok("key", "logged in without a key (browser or device login)");
  const path = v(s.key_path);
  const relogin = `apes login ${v(s.email)} --key PATH`;
  if (!info) return fail("key", `${path} (recorded at login) does not exist`, relogin);
  if (actual.error) return fail("key", `${path}: ${v(actual.error)}`, relogin);
  if (s.key_fingerprint && actual.fingerprint !== s.key_fingerprint)
    return fail(
      "key",
      `${path} is ${v(actual.fingerprint)}, not the key logged in with (${v(s.key_fingerprint)})`,
      `apes login ${v(s.email)} --key ${path}`,
    );
  if ((info.mode & 0o077) !== 0)
    return warn("key", `${path} is readable by others (mode ${octal(info.mode)})`, `chmod 600 ${path}`);
  return ok("key", `${path} (${v(actual.fingerprint)})`);
}

export function decideDns(
  email: string,
  sessionIdp: string,
  answer: DdisaAnswer | undefined,
  error: string | undefined,
  configuredIdp: string | undefined,
): CheckResult {
  const domain = email.slice(email.lastIndexOf("@") + 1);
  const check = `apes dns check ${v(email)}`;
  if (error) return warn("dns", `cannot ask DNS about ${v(domain)}: ${v(error)}`, check);
  if (!answer?.selected) {
    const why = configuredIdp
      ? "login uses the configured idp"
      : "logins by email need it (or `idp` in config.toml)";
    return warn(
      "dns",
      `no valid DDISA record at ${v(answer?.name ?? `_ddisa.${domain}`)}: ${why}`,
      `publish ${v(answer?.name ?? `_ddisa.${domain}`)} TXT "v=ddisa1 idp=${v(sessionIdp)}; mode=open"`,
    );
  }
  const { idp, mode } = answer.selected;
  if (mode === "deny") return fail("dns", `${v(answer.name)} says mode=deny: logins are refused`, check);
  const same = idp.replace(/\/+$/, "") === sessionIdp.replace(/\/+$/, "");
  if (!same && !configuredIdp)
    return warn("dns", `${v(answer.name)} names ${v(idp)}, your session is with ${v(sessionIdp)}`, check);
  return ok("dns", `${v(answer.name)}: idp ${v(idp)}, mode ${v(mode)}`);
}

// --- the run --------------------------------------------------------------------------------------

const errnoCode = (e: unknown) => (e as NodeJS.ErrnoException).code;

/** Every check, in the order an admin would look. */
export async function runDoctor(env: DoctorEnv): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const { paths } = env;
  const installed = paths.source !== "defaults";
  const shim = shimPath(paths);
  const exec = execPath(paths);
  const shimInfo = await env.lstat(shim);
  results.push(decideShim(shim, shimInfo, installed));
  const elevation = installed || shimInfo !== undefined;
  let issuers: string[] = [];
  let pinnedCa: string | undefined;
  if (elevation) {
    const dir = exec.slice(0, exec.lastIndexOf("/"));
    results.push(decideExec(exec, await env.lstat(exec), dir, await env.lstat(dir)));
    const verifier = await env.lookupUser(VERIFIER_USER);
    results.push(...decideVerifierUser(verifier, paths.cacheDir, await env.lstat(paths.cacheDir)));
    if (env.uid === 0) {
      const socket = `${paths.cacheDir}/verifier.sock`;
      results.push(decideResidentVerifier(socket, await env.lstat(socket), verifier?.uid));
    }
    results.push(
      decideDirectories([
        [paths.configFile, await untrustedParent(env, paths.configFile)],
        [paths.auditLog, await untrustedParent(env, paths.auditLog)],
      ]),
    );
    const logDir = paths.auditLog.slice(0, paths.auditLog.lastIndexOf("/"));
    const asRoot = env.uid === 0;
    results.push(
      decideAuditLog(
        logDir,
        await env.lstat(logDir),
        paths.auditLog,
        asRoot ? await env.lstat(paths.auditLog) : undefined,
        asRoot,
      ),
    );
    const policyInfo = await env.lstat(paths.configFile);
    results.push(decidePolicyFile(paths.configFile, policyInfo));
    if (policyInfo) {
      const policy = await checkPolicy(env, results);
      if (policy) {
        issuers = policy.issuers;
        pinnedCa = policy.ca;
      }
    }
  }
  for (const issuer of issuers) {
    results.push(...(await checkIdp(env, issuer, pinnedCa ? { pinnedCa } : "user")));
  }
  results.push(...(await checkSession(env, issuers)));
  return results;
}

/** Parses the policy (root only: it is 0600); pushes its result; returns the issuers and pinned CA. */
async function checkPolicy(
  env: DoctorEnv,
  results: CheckResult[],
): Promise<{ issuers: string[]; ca?: string } | undefined> {
  const file = env.paths.configFile;
  let text: string;
  try {
    text = await env.readFile(file);
  } catch (e) {
    if (errnoCode(e) === "EACCES" && env.uid !== 0) {
      results.push(
        warn("policy", `${file} is root-only: its contents are checked as root`, "sudo apes doctor"),
      );
    } else
      results.push(
        fail("policy", `cannot read ${file}: ${v((e as Error).message)}`, "sudo apes trust --show"),
      );
    return undefined;
  }
  // Loaded here: only doctor runs that can read the policy pay for the TOML parser.
  const { parsePolicy } = await import("../../verifier/policy.ts");
  let policy: import("../../verifier/policy.ts").Policy;
  try {
    policy = parsePolicy(text, file, { hostname: env.hostname() });
  } catch (e) {
    results.push(
      fail(
        "policy",
        v((e as Error).message),
        "rewrite it with `sudo apes trust ...` (see `apes trust --help`)",
      ),
    );
    return undefined;
  }
  let ca: string | undefined;
  try {
    ca = await env.pinnedCa(policy);
  } catch (e) {
    results.push(
      fail("policy", v((e as Error).message), "sudo apes trust ... --ca-file CA.pem (pins the CA inline)"),
    );
    return undefined;
  }
  const users = Object.keys(policy.users).length;
  results.push(
    ok(
      "policy",
      `${policy.issuers.length} issuer${policy.issuers.length > 1 ? "s" : ""}, ${policy.approvers.length} approver${policy.approvers.length > 1 ? "s" : ""}, ${users} mapped user${users > 1 ? "s" : ""}, host ${v(policy.host)}${ca ? ", CA pinned" : ""}`,
    ),
  );
  return { issuers: policy.issuers, ca };
}

async function checkSession(env: DoctorEnv, checkedIssuers: readonly string[]): Promise<CheckResult[]> {
  const file = env.authFile;
  const info = await env.lstat(file);
  if (!info) return [warn("session", `not logged in (no ${file})`, "apes login EMAIL")];
  const fileResult = decideSessionFile(file, info, env.uid);
  let s: StoredSession | undefined;
  try {
    s = await env.session();
  } catch (e) {
    return [fileResult, fail("session", v((e as Error).message), "apes logout && apes login EMAIL")];
  }
  if (!s) return [fileResult];
  const results = [fileResult, ok("session", `${v(s.email)} (${v(s.act)}) at ${v(s.idp)}`)];
  let keyInfo: FileInfo | undefined;
  const actual: { fingerprint?: string; error?: string } = {};
  if (s.key_path) {
    keyInfo = await env.lstat(s.key_path).catch(() => undefined);
    if (keyInfo) {
      try {
        actual.fingerprint = await env.keyFingerprint(s.key_path);
      } catch (e) {
        actual.error = (e as Error).message;
      }
    }
  }
  results.push(decideKey(s, keyInfo, actual), decideToken(s, Math.floor(env.nowMs() / 1000)));
  // The session's IdP, unless the policy's check above already covered it.
  const normalized = s.idp.replace(/\/+$/, "");
  if (!checkedIssuers.includes(normalized)) {
    try {
      results.push(...(await checkIdp(env, normalized, "user")));
    } catch (e) {
      results.push(fail("idp", `${v(s.idp)}: ${v((e as Error).message)}`, "apes login EMAIL --idp URL"));
    }
  }
  const configured = await env.configuredIdp();
  let answer: DdisaAnswer | undefined;
  let error: string | undefined;
  try {
    answer = await env.ddisa(s.email);
  } catch (e) {
    error = (e as Error).message;
  }
  results.push(decideDns(s.email, s.idp, answer, error, configured));
  return results;
}
