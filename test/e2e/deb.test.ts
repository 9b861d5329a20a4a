/**
 * `make deb` on this machine, installed for real into /usr with dpkg: the package's files, modes
 * and users (the IdP's and the Nest's units shipped, neither enabled; the copyright file naming every
 * bundled package); an elevation through the installed setuid shim as a real non-root user, approved by a
 * human, against a real `apes idp serve` over TLS with the CA pinned by `apes trust` (as
 * scripts/demo.sh does it); then an upgrade over a package built from the same tree with a higher
 * version (the shim still elevates, the policy and users stay), then a purge (nothing is left but
 * what packaging/debian/postrm says stays). Needs root; skipped, saying why, without dpkg.
 *
 * Other tests never use /usr/bin/apes or /etc/apes (they install into temporary prefixes), so
 * installing there does not disturb them. Two runs of this file (two worktrees) are serialised by
 * a lock file held for as long as the package is installed; afterAll purges it even on failure.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nestLayout } from "../../cli/daemon/host.ts";
import { nestUnit } from "../../cli/daemon/unit.ts";
import { pathsFrom } from "../../cli/elevation/paths.ts";
import {
  collect,
  ensureTestUser,
  makeUserDir,
  REPO,
  runAsUser,
  spawnAsUser,
  type UnixUser,
} from "../helpers/shim.ts";

const execFileP = promisify(execFile);
const HAVE_DPKG = existsSync("/usr/bin/dpkg") && existsSync("/usr/bin/dpkg-deb");
if (!HAVE_DPKG)
  console.warn("test/e2e/deb.test.ts skipped: dpkg and dpkg-deb are not installed (not Debian?)");

const SHIM = "/usr/bin/apes";
const EXEC = "/usr/libexec/apes/apes";
const POLICY = "/etc/apes/config.toml";
/** The Nest's unit, named as `apes daemon install` names it (cli/commands/daemon/install.ts). */
const NEST_UNIT = "/lib/systemd/system/apes-nest.service";
const AUDIT = "/var/log/apes/audit.log";
const IDP_DATA = "/var/lib/apes-idp";
/** The directories the package and `apes trust` write outside their own files. */
const LEFTOVERS = ["/etc/apes", "/var/log/apes", "/var/cache/apes", "/var/lib/apes", IDP_DATA];
const LOCK = "/run/lock/apes-deb-e2e.lock";
const HUMAN = "alice@deb.example";
const AGENT = "agent@deb.example";

const BASE_VERSION = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")).version as string;
/** Higher than BASE_VERSION for dpkg (0.1.0 -> 0.1.1~test). */
const UPGRADE_VERSION = BASE_VERSION.replace(/(\d+)$/, (n) => `${Number(n) + 1}~test`);

let work: string;
let debs: { base: string; upgrade: string };
let lock: ChildProcess | undefined;
/** Set once this run installed the package: only then does afterAll purge and clean up after it. */
let installed = false;
let idp: ChildProcess | undefined;
let idpUrl = "";
let user: UnixUser;
let humanHome: string;
let agentHome: string;

const mode = (p: string) => statSync(p).mode & 0o7777;
const owner = (p: string) => `${statSync(p).uid}:${statSync(p).gid}`;
function passwd(name: string): string[] | undefined {
  try {
    return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
  } catch {
    return undefined;
  }
}
const uidOf = (name: string) => `${passwd(name)![2]}:${passwd(name)![3]}`;

function installedVersion(): string | undefined {
  try {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not a template
    const out = execFileSync("dpkg-query", ["-W", "-f", "${Status} ${Version}", "apes"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    return /^install ok installed (\S+)$/.exec(out)?.[1] ?? (out.includes("not-installed") ? undefined : out);
  } catch {
    return undefined;
  }
}

/** dpkg, retried while another dpkg or apt holds the lock (bounded: 3 minutes). */
async function dpkg(args: string[]): Promise<{ stdout: string; stderr: string }> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await execFileP("dpkg", args, { env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    } catch (e) {
      const stderr = String((e as { stderr?: string }).stderr ?? "");
      if (!/lock/i.test(stderr) || attempt >= 90) throw e;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function buildDeb(version: string, lintian: boolean): Promise<string> {
  const out = join(work, `deb-${version}`);
  await execFileP("make", ["-s", "-o", "build", "deb", `VERSION=${version}`, `DEB_OUT=${out}`], {
    cwd: REPO,
    env: { ...process.env, DEB_COMPRESS: "gzip", DEB_LINTIAN: lintian ? "1" : "0" },
    maxBuffer: 64 << 20,
  });
  const deb = join(out, `apes_${version}_amd64.deb`);
  expect(existsSync(deb), deb).toBe(true);
  return deb;
}

/** Holds LOCK (flock) until the holder's stdin closes: at afterAll, or when this process dies. */
async function takeLock(): Promise<ChildProcess> {
  const holder = spawn("flock", ["-w", "900", LOCK, "-c", "echo locked; exec cat >/dev/null"], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.once("data", () => resolve());
    holder.once("exit", (code) => reject(new Error(`flock ${LOCK} failed (${code})`)));
  });
  return holder;
}

function openssl(args: string[]): void {
  execFileSync("openssl", args, { stdio: "ignore" });
}

/** A CA and a server certificate for 127.0.0.1 signed by it (scripts/demo.sh's). */
function makeCa(dir: string): { ca: string; cert: string; key: string } {
  const p = (f: string) => join(dir, f);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl([
    "req",
    "-x509",
    ...ec,
    "-days",
    "1",
    "-subj",
    "/CN=apes deb test CA",
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.pem"),
  ]);
  openssl(["req", ...ec, "-subj", "/CN=127.0.0.1", "-keyout", p("server.key"), "-out", p("server.csr")]);
  writeFileSync(p("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  openssl(
    [
      "x509",
      "-req",
      "-in",
      p("server.csr"),
      "-CA",
      p("ca.pem"),
      "-CAkey",
      p("ca.key"),
      "-CAcreateserial",
    ].concat(["-days", "1", "-extfile", p("server.ext"), "-out", p("server.pem")]),
  );
  chmodSync(p("ca.pem"), 0o644);
  return { ca: p("ca.pem"), cert: p("server.pem"), key: p("server.key") };
}

async function startInstalledIdp(dataDir: string, tls: { cert: string; key: string }): Promise<string> {
  const p = spawn(
    EXEC,
    [
      "idp",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--data",
      dataDir,
      "--tls-cert",
      tls.cert,
      "--tls-key",
      tls.key,
    ],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  idp = p;
  let log = "";
  return await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the IdP did not start:\n${log}`)), 20_000);
    p.stderr!.setEncoding("utf8").on("data", (d: string) => {
      log += d;
      const m = /"msg":"listening","url":"([^"]+)"/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    p.once("exit", (code) => reject(new Error(`the IdP exited (${code}):\n${log}`)));
  });
}

function asHuman(args: string[]): string {
  return execFileSync(EXEC, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { PATH: "/usr/bin:/bin", HOME: humanHome, LANG: "C.UTF-8" },
    encoding: "utf8",
  });
}

function auditLines(): Array<Record<string, unknown>> {
  if (!existsSync(AUDIT)) return [];
  return readFileSync(AUDIT, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const agentEnv = () => ({ PATH: "/usr/bin:/bin", HOME: agentHome, LANG: "C.UTF-8" });

/** The agent runs `apes --reason R -- id -u` through the installed shim; the human approves. */
async function elevate(reason: string) {
  const auditBefore = auditLines().length;
  const child = spawnAsUser(user, [SHIM, "--reason", reason, "--", "/usr/bin/id", "-u"], { env: agentEnv() });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString("utf8");
  });
  const done = collect(child, { timeoutMs: 60_000 });
  let grant: string | undefined;
  for (let i = 0; i < 600 && !grant && child.exitCode === null; i++) {
    grant = /grant ([0-9a-f-]{36}) needs approval/.exec(stderr)?.[1];
    if (!grant) await new Promise((r) => setTimeout(r, 50));
  }
  if (grant) asHuman(["grants", "approve", grant]);
  const r = await done;
  return { ...r, grant, audit: auditLines().slice(auditBefore) };
}

function expectInstalledLayout(): void {
  expect(mode(SHIM)).toBe(0o4755);
  expect(owner(SHIM)).toBe("0:0");
  expect(mode(EXEC)).toBe(0o755);
  expect(owner(EXEC)).toBe("0:0");
  expect(readFileSync(EXEC).equals(readFileSync(join(REPO, "dist", "apes")))).toBe(true);
  expect(JSON.parse(readFileSync("/usr/libexec/apes/paths.json", "utf8"))).toEqual({
    prefix: "/usr",
    sysconfdir: "/etc",
    localstatedir: "/var",
  });
  expect([mode("/etc/apes"), owner("/etc/apes")]).toEqual([0o755, "0:0"]);
  expect([mode("/var/log/apes"), owner("/var/log/apes")]).toEqual([0o700, "0:0"]);
  // The shim's early-verifier slots: root's alone, or the shim starts no early verifier.
  expect([mode("/var/lib/apes"), owner("/var/lib/apes")]).toEqual([0o700, "0:0"]);
  // The verifier's cache and the IdP's data belong to their system users (made by the postinst).
  expect([mode("/var/cache/apes"), owner("/var/cache/apes")]).toEqual([0o700, uidOf("_apes")]);
  expect([mode(IDP_DATA), owner(IDP_DATA)]).toEqual([0o700, uidOf("_apes-idp")]);
  for (const name of ["_apes", "_apes-idp"]) {
    const entry = passwd(name)!;
    expect(entry[6], name).toBe("/usr/sbin/nologin");
    expect(Number(entry[2]), `${name} is a system user`).toBeLessThan(1000);
  }
  for (const f of [
    "/lib/systemd/system/apes-idp.service",
    "/lib/systemd/system/apes-verifier.service",
    NEST_UNIT,
    "/usr/share/bash-completion/completions/apes",
    "/usr/share/zsh/vendor-completions/_apes",
    "/usr/share/fish/vendor_completions.d/apes.fish",
    "/usr/share/doc/apes/copyright",
    "/usr/share/doc/apes/changelog.gz",
  ]) {
    expect(mode(f), f).toBe(0o644);
  }
  expect(readFileSync("/lib/systemd/system/apes-idp.service", "utf8")).toMatch(
    /^ExecStart=\/usr\/libexec\/apes\/apes idp serve --data \/var\/lib\/apes-idp /m,
  );
  // The Nest's unit is the one `apes daemon install` would write for these paths (same function), and
  // the package neither enables nor starts either unit.
  expect(readFileSync(NEST_UNIT, "utf8")).toBe(
    nestUnit(nestLayout(pathsFrom({ prefix: "/usr", sysconfdir: "/etc", localstatedir: "/var" }, "package"))),
  );
  expect(readFileSync(NEST_UNIT, "utf8")).toMatch(/^ExecStart=\/usr\/libexec\/apes\/apes daemon run$/m);
  expect(readFileSync("/lib/systemd/system/apes-verifier.service", "utf8")).toMatch(
    /^ExecStart=\/usr\/libexec\/apes\/apes verifier serve /m,
  );
  for (const unit of ["apes-idp.service", "apes-nest.service", "apes-verifier.service"]) {
    expect(existsSync(`/etc/systemd/system/multi-user.target.wants/${unit}`), unit).toBe(false);
  }
  // The copyright file names every package the build bundled (dist/bundled-packages.json, from
  // esbuild's metafile), the ones added since the first two among them.
  const copyright = readFileSync("/usr/share/doc/apes/copyright", "utf8");
  const bundled = JSON.parse(readFileSync(join(REPO, "dist", "bundled-packages.json"), "utf8")) as {
    name: string;
    dir: string;
  }[];
  expect(bundled.map((p) => p.name)).toEqual(
    expect.arrayContaining([
      "commander",
      "smol-toml",
      "@simplewebauthn/server",
      "@simplewebauthn/browser",
      "ws",
      "web-push",
      "nodemailer",
    ]),
  );
  for (const p of bundled) expect(copyright, p.name).toContain(`\nFiles: ${p.dir}/*\nComment: ${p.name} `);
  // man finds the pages by name, and every file matches the package's md5sums.
  expect(execFileSync("man", ["-w", "apes-grants"], { encoding: "utf8" }).trim()).toBe(
    "/usr/share/man/man1/apes-grants.1.gz",
  );
  expect(execFileSync("man", ["-w", "5", "apes-config"], { encoding: "utf8" }).trim()).toBe(
    "/usr/share/man/man5/apes-config.5.gz",
  );
  expect(execFileSync("dpkg", ["--verify", "apes"], { encoding: "utf8" })).toBe("");
}

describe.skipIf(!HAVE_DPKG)("the Debian package", () => {
  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error("installing a .deb needs root");
    work = mkdtempSync(join(tmpdir(), "apes-deb-"));
    chmodSync(work, 0o755);
    // Lintian once (it takes a minute on the 120 MB executable); the upgrade package is the same tree.
    debs = { base: await buildDeb(BASE_VERSION, true), upgrade: await buildDeb(UPGRADE_VERSION, false) };
    lock = await takeLock();
    const left = installedVersion();
    // A `sudo make install` (LOCALSTATEDIR=/var) or an admin's package: not ours to replace or purge.
    if (left !== undefined || [SHIM, ...LEFTOVERS].some((p) => existsSync(p))) {
      throw new Error(
        `apes is already installed here (${left ?? SHIM}): this test installs and purges the package; remove it first with dpkg --purge apes`,
      );
    }
    user = ensureTestUser();
    humanHome = join(work, "human");
    mkdirSync(humanHome, { mode: 0o700 });
    agentHome = makeUserDir(user, work);
  }, 900_000);

  afterAll(async () => {
    idp?.kill("SIGKILL");
    try {
      if (installed && installedVersion() !== undefined) await dpkg(["--purge", "apes"]);
    } finally {
      // What a failed purge check may have left (none of it existed before this run).
      if (installed) for (const p of LEFTOVERS) rmSync(p, { recursive: true, force: true });
      lock?.stdin?.end(); // releases the lock
      if (work) rmSync(work, { recursive: true, force: true });
    }
  }, 300_000);

  it("installs with dpkg -i: the shim 4755 root:root, the executable, paths, users and directories", async () => {
    installed = true;
    await dpkg(["-i", debs.base]);
    expect(installedVersion()).toBe(BASE_VERSION);
    expectInstalledLayout();
  }, 300_000);

  it("elevates through the installed shim: a real user, a real IdP over TLS with a pinned CA", async () => {
    const tls = makeCa(work);
    // Keys: the human's as root; the agent's made by the agent itself through the shim.
    asHuman(["keygen", "--out", join(humanHome, "id_ed25519"), "--comment", HUMAN]);
    const keygen = await runAsUser(
      user,
      [SHIM, "keygen", "--out", join(agentHome, "id_ed25519"), "--comment", AGENT],
      {
        env: agentEnv(),
      },
    );
    expect(keygen.code, keygen.stderr).toBe(0);
    const idpData = join(work, "idp");
    asHuman([
      "idp",
      "users",
      "add",
      HUMAN,
      "--human",
      "--key",
      join(humanHome, "id_ed25519.pub"),
      "--data",
      idpData,
    ]);
    asHuman(
      [
        "idp",
        "users",
        "add",
        AGENT,
        "--agent",
        "--owner",
        HUMAN,
        "--key",
        join(agentHome, "id_ed25519.pub"),
      ].concat(["--data", idpData]),
    );
    idpUrl = await startInstalledIdp(idpData, tls);
    for (const home of [humanHome, agentHome]) {
      mkdirSync(join(home, ".config", "apes"), { recursive: true });
      writeFileSync(
        join(home, ".config", "apes", "config.toml"),
        `idp = "${idpUrl}"\nca_file = "${tls.ca}"\n`,
      );
    }
    execFileSync("chown", ["-R", `${user.uid}:${user.gid}`, agentHome]);
    asHuman(["login", HUMAN, "--key", join(humanHome, "id_ed25519")]);
    const login = await runAsUser(user, [SHIM, "login", AGENT, "--key", join(agentHome, "id_ed25519")], {
      env: agentEnv(),
    });
    expect(login.code, login.stderr).toBe(0);
    // The policy the installed shim reads: /etc/apes/config.toml, the IdP's CA pinned in it.
    execFileSync(
      SHIM,
      ["trust", "--idp", idpUrl, "--ca-file", tls.ca, "--approvers", HUMAN, "--map", `${user.name}=${AGENT}`],
      {
        stdio: "ignore",
      },
    );
    expect([mode(POLICY), owner(POLICY)]).toEqual([0o600, "0:0"]);
    expect(readFileSync(POLICY, "utf8")).toContain("BEGIN CERTIFICATE");

    const r = await elevate("deb install");
    expect(r.grant, r.stderr).toBeDefined();
    expect([r.code, r.stdout], r.stderr).toEqual([0, "0\n"]);
    expect(r.audit.at(-1)).toMatchObject({ decision: "allow", user: user.name, argv: ["/usr/bin/id", "-u"] });
  }, 180_000);

  it("upgrades over itself (a higher version from the same tree): files, users and policy stay, and it still elevates", async () => {
    const users = [uidOf("_apes"), uidOf("_apes-idp")];
    const policy = readFileSync(POLICY, "utf8");
    await dpkg(["-i", debs.upgrade]);
    expect(installedVersion()).toBe(UPGRADE_VERSION);
    expectInstalledLayout();
    expect([uidOf("_apes"), uidOf("_apes-idp")]).toEqual(users);
    expect(readFileSync(POLICY, "utf8")).toBe(policy);
    const r = await elevate("deb upgrade");
    expect([r.code, r.stdout], r.stderr).toEqual([0, "0\n"]);
    expect(r.audit.at(-1)).toMatchObject({ decision: "allow", user: user.name });
  }, 300_000);

  it("purges: every file of the package, the policy, the audit log and the cache are gone; the users stay", async () => {
    const files = execFileSync("dpkg-query", ["-L", "apes"], { encoding: "utf8" })
      .split("\n")
      .filter((f) => f.startsWith("/") && existsSync(f) && !statSync(f).isDirectory());
    expect(files).toContain(SHIM);
    expect(files).toContain(NEST_UNIT);
    // IdP data in /var/lib/apes-idp is kept by a purge (postrm): an IdP's keys and accounts.
    writeFileSync(join(IDP_DATA, "kept"), "x");
    const { stderr } = await dpkg(["--purge", "apes"]);
    expect(installedVersion()).toBeUndefined();
    for (const f of files) expect(existsSync(f), f).toBe(false);
    for (const d of ["/etc/apes", "/var/log/apes", "/var/cache/apes", "/var/lib/apes", "/usr/libexec/apes"]) {
      expect(existsSync(d), d).toBe(false);
    }
    expect(stderr).toMatch(/kept the IdP data in \/var\/lib\/apes-idp/);
    expect(existsSync(join(IDP_DATA, "kept"))).toBe(true);
    // The system users stay (a freed uid could be reused by a new account that inherits their files).
    expect(passwd("_apes")).toBeDefined();
    expect(passwd("_apes-idp")).toBeDefined();
  }, 300_000);
});
