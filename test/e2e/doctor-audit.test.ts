import { type ChildProcess, execFile, spawn } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { request, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CheckResult } from "../../cli/doctor/checks.ts";
import { queryTxtUdp } from "../../protocol/resolver.ts";
import { addUser, type IdpHandle, loopbackCert, newKey, runApes, startIdp } from "../helpers/idp.ts";
import {
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  makeUserDir,
  readAudit,
  runAsUser,
  type ShimInstall,
  type UnixUser,
  writeConfig,
} from "../helpers/shim.ts";

/**
 * `apes doctor` and `apes audit` of a REAL installation (the setuid shim and the executable made by
 * `make install` into a temporary prefix) against a real `apes idp serve` with TLS, its CA pinned in
 * the policy by the real `apes trust`, and a real DNS server (dnsmasq) publishing the domain's DDISA
 * record. First everything is ok; then one thing at a time is broken and must give its fail line and
 * fix. The audit log is written by real elevations through the shim.
 */

const ALICE = "alice@example.com";
const dnsmasqBin = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"].find((p) => existsSync(p));

let inst: ShimInstall;
let user: UnixUser;
let idp: IdpHandle;
let work: string;
let ca: string;
let rootHome: string;
let dnsServer: string;
let dnsmasq: ChildProcess | undefined;
let policyText: string;

async function freePort(): Promise<number> {
  const s = createTcpServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function startDns(record: string): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const conf = join(work, `dnsmasq-${port}.conf`);
    const lines = ["no-resolv", "no-hosts", "no-poll", `port=${port}`, "listen-address=127.0.0.1"];
    lines.push(
      "bind-interfaces",
      "pid-file=",
      "local=/example.com/",
      `txt-record=_ddisa.example.com,"${record}"`,
    );
    writeFileSync(conf, `${lines.join("\n")}\n`);
    const child = spawn(dnsmasqBin!, ["--no-daemon", `--conf-file=${conf}`], { stdio: "ignore" });
    dnsmasq = child;
    for (let i = 0; i < 50 && child.exitCode === null; i++) {
      try {
        await queryTxtUdp("_ddisa.example.com", { host: "127.0.0.1", port, family: 4 }, 200);
        dnsServer = `127.0.0.1:${port}`;
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    child.kill("SIGKILL");
  }
  throw new Error("dnsmasq did not start");
}

const rootEnv = () => ({ PATH: "/usr/bin:/bin", HOME: rootHome, APES_DNS_SERVERS: dnsServer });

/** The installed executable's `doctor` as root (it finds the install through its paths.json). */
function doctorAsRoot(): Promise<{ code: number; results: CheckResult[]; stderr: string }> {
  return new Promise((resolve) => {
    execFile(inst.exec, ["--json", "doctor"], { env: rootEnv(), timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, results: JSON.parse(stdout) as CheckResult[], stderr });
    });
  });
}

const failures = (results: CheckResult[]) => results.filter((r) => r.status !== "ok");

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the doctor e2e tests run as root (CI does)");
  if (!dnsmasqBin) throw new Error("dnsmasq is not installed: apt-get install -y dnsmasq-base");
  inst = await installIntoTempPrefix();
  user = ensureTestUser();
  work = mkdtempSync(join(tmpdir(), "apes-doctor-e2e-"));
  chmodSync(work, 0o755);
  const tls = loopbackCert(work);
  ca = tls.cert;
  const key = newKey(ALICE);
  const data = join(work, "idp");
  await addUser(data, ALICE, { publicKey: key.publicLine });
  idp = await startIdp({ dataDir: data, tls });
  await startDns(`v=ddisa1 idp=${idp.url}; mode=open; priority=10`);

  rootHome = mkdtempSync(join(work, "root-home-"));
  mkdirSync(join(rootHome, ".config", "apes"), { recursive: true, mode: 0o700 });
  writeFileSync(join(rootHome, ".config", "apes", "config.toml"), `ca_file = "${ca}"\n`);
  const keyFile = join(rootHome, "key.pem");
  writeFileSync(keyFile, key.privateKey.export({ type: "pkcs8", format: "pem" }) as string, { mode: 0o600 });
  const login = await runApes(["login", ALICE, "--key", keyFile, "--idp", idp.url], rootEnv());
  expect(login.code, login.stderr).toBe(0);
  // The real `apes trust` of the install: validates discovery and JWKS over TLS, pins the CA.
  const trust = await runAsRoot([
    "trust",
    "--idp",
    idp.url,
    "--ca-file",
    ca,
    "--approvers",
    ALICE,
    "--map",
    `${user.name}=${ALICE}`,
  ]);
  expect(trust.code, trust.stderr).toBe(0);
  policyText = readFileSync(inst.config, "utf8");
}, 180_000);

afterAll(async () => {
  dnsmasq?.kill("SIGKILL");
  await idp?.stop();
  await inst?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

function runAsRoot(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(inst.exec, args, { env: rootEnv(), timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

describe("apes doctor on a real installation", () => {
  it("a healthy install, policy, IdP, clock, session and DNS record: every check ok, exit 0", async () => {
    const r = await doctorAsRoot();
    expect(failures(r.results)).toEqual([]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.results.map((c) => c.check)).toEqual([
      "shim",
      "executable",
      "verifier-user",
      "cache-dir",
      "verifier-svc",
      "directories",
      "audit-log",
      "policy-file",
      "policy",
      "idp",
      "jwks",
      "clock",
      "session-file",
      "session",
      "key",
      "token",
      "dns",
    ]);
    expect(r.results.find((c) => c.check === "idp")!.detail).toContain("through the policy's pinned CA");
    expect(r.results.find((c) => c.check === "verifier-svc")!.detail).toContain("not running");
  });

  it("the human output: one line per check", async () => {
    const r = await runAsRoot(["doctor"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ok {4}shim +.*setuid root, mode 4755$/m);
    expect(r.stdout.trimEnd().split("\n")).toHaveLength(17);
  });

  it("a shim without its setuid bit fails, with the chmod that fixes it", async () => {
    chmodSync(inst.shim, 0o755);
    try {
      const r = await doctorAsRoot();
      expect(r.code).toBe(1);
      expect(failures(r.results)).toEqual([
        expect.objectContaining({ check: "shim", status: "fail", fix: `sudo chmod 4755 ${inst.shim}` }),
      ]);
      expect(r.stderr).toContain("1 of 17 checks failed");
    } finally {
      chmodSync(inst.shim, 0o4755);
    }
  });

  it("a policy of mode 0644 fails, with the chown/chmod that fixes it", async () => {
    chmodSync(inst.config, 0o644);
    try {
      const r = await doctorAsRoot();
      expect(r.code).toBe(1);
      expect(failures(r.results)).toEqual([
        expect.objectContaining({
          check: "policy-file",
          status: "fail",
          fix: `sudo chown root:root ${inst.config} && sudo chmod 600 ${inst.config}`,
        }),
      ]);
    } finally {
      chmodSync(inst.config, 0o600);
    }
  });

  it("a world-writable directory above the policy fails, naming the directory", async () => {
    chmodSync(inst.etc, 0o777);
    try {
      const r = await doctorAsRoot();
      expect(r.code).toBe(1);
      expect(failures(r.results)).toEqual([
        expect.objectContaining({
          check: "directories",
          status: "fail",
          detail: `the shim refuses ${inst.config}: ${inst.etc} is group- or world-writable (mode 777)`,
          fix: `sudo chown root:root ${inst.etc} && sudo chmod go-w ${inst.etc}`,
        }),
      ]);
    } finally {
      chmodSync(inst.etc, 0o755);
    }
  });

  it("a stopped IdP fails as unreachable, with what to do", async () => {
    await idp.stop();
    try {
      const r = await doctorAsRoot();
      expect(r.code).toBe(1);
      const bad = failures(r.results);
      expect(bad.map((c) => c.check)).toEqual(["idp"]);
      expect(bad[0]!.detail).toContain(`${idp.url} is unreachable (through the policy's pinned CA)`);
      expect(bad[0]!.fix).toContain("start the IdP");
    } finally {
      await idp.restart();
    }
  });

  it("an IdP whose clock is 10 minutes off fails the clock check", async () => {
    // A second real IdP behind a loopback TLS proxy (the same pinned certificate) that rewrites only
    // the Date header.
    let target = "";
    const proxy: Server = createHttpsServer(
      { cert: readFileSync(ca), key: readFileSync(join(work, "key.pem")) },
      (req, res) => {
        const up = request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (answer) => {
          const headers = { ...answer.headers, date: new Date(Date.now() - 600_000).toUTCString() };
          res.writeHead(answer.statusCode ?? 502, headers);
          answer.pipe(res);
        });
        up.on("error", () => res.writeHead(502).end());
        req.pipe(up);
      },
    );
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const proxyUrl = `https://127.0.0.1:${(proxy.address() as { port: number }).port}`;
    const skewed = await startIdp({ issuer: proxyUrl });
    target = skewed.url;
    const pem = readFileSync(ca, "utf8");
    writeConfig(
      inst,
      `issuers = ["${proxyUrl}"]\nca_pem = '''${pem}'''\napprovers = ["${ALICE}"]\n[users]\n"${user.name}" = ["${ALICE}"]\n`,
    );
    try {
      const r = await doctorAsRoot();
      expect(r.code).toBe(1);
      const bad = failures(r.results);
      expect(bad).toEqual([expect.objectContaining({ check: "clock", status: "fail" })]);
      expect(bad[0]!.detail).toMatch(
        /this machine's clock is (599|600|601) s ahead of https:\/\/127\.0\.0\.1/,
      );
      expect(bad[0]!.fix).toContain("timedatectl set-ntp true");
      // The JWKS of that issuer is fine: only the clock is wrong.
      expect(r.results.filter((c) => c.check === "jwks").every((c) => c.status === "ok")).toBe(true);
    } finally {
      writeConfig(inst, policyText);
      await skewed.stop();
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  }, 60_000);

  it("as a user through the shim: the root-only policy is a warning pointing at sudo; exit 0", async () => {
    const home = makeUserDir(user, work);
    const r = await runAsUser(user, [inst.shim, "--json", "doctor"], {
      env: { PATH: "/usr/bin:/bin", HOME: home, APES_DNS_SERVERS: dnsServer },
    });
    expect(r.code, r.stderr).toBe(0);
    const results = JSON.parse(r.stdout) as CheckResult[];
    expect(failures(results)).toEqual([
      expect.objectContaining({ check: "policy", status: "warn", fix: "sudo apes doctor" }),
      expect.objectContaining({ check: "session", status: "warn", fix: "apes login EMAIL" }),
    ]);
  });
});

/** A real elevation by the test user that the shim denies and audits (no session: the requester fails). */
async function deniedElevation(argv: string[]): Promise<void> {
  const home = makeUserDir(user, work);
  const before = readAudit(inst).length;
  const r = await runAsUser(user, [inst.shim, "--reason", "audit e2e", "--", ...argv], {
    env: { PATH: "/usr/bin:/bin", HOME: home, APES_DNS_SERVERS: dnsServer },
    timeoutMs: 30_000,
  });
  expect(r.code, r.stderr).not.toBe(0);
  expect(readAudit(inst).length).toBe(before + 1);
}

describe("apes audit on the install's real audit log", () => {
  it("refuses a non-root user with 77 and the sudo hint", async () => {
    const r = await runAsUser(user, [inst.shim, "audit"], { env: { PATH: "/usr/bin:/bin", HOME: "/" } });
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("sudo apes audit");
  });

  it("shows real denials: --json byte for byte, filters, the table", async () => {
    await deniedElevation(["/usr/bin/id", "-u"]);
    await deniedElevation(["/bin/true"]);
    const stored = readFileSync(inst.auditLog, "utf8");
    const all = await runAsRoot(["--json", "audit"]);
    expect(all.code, all.stderr).toBe(0);
    expect(all.stdout).toBe(stored);
    const mine = await runAsRoot(["--json", "audit", "--user", user.name, "--denied", "--since", "1h"]);
    expect(mine.stdout).toBe(stored);
    expect((await runAsRoot(["--json", "audit", "--user", "nobody"])).stdout).toBe("");
    expect((await runAsRoot(["--json", "audit", "--grant", "no-such-grant"])).stdout).toBe("");
    const table = await runAsRoot(["audit"]);
    const rows = table.stdout.trimEnd().split("\n");
    expect(rows[0]).toMatch(/^TIME +DECISION +REASON +USER +RUN AS +GRANT +COMMAND +OTHER$/);
    expect(rows).toHaveLength(3);
    expect(rows[1]).toMatch(new RegExp(`deny +\\S+ +${user.name} +root .*/usr/bin/id -u`));
  });

  it("--follow sees new attempts, reopens the log after rotation, and ends on SIGINT with 0", async () => {
    const child = spawn(inst.exec, ["--json", "audit", "--follow"], { env: rootEnv(), stdio: "pipe" });
    const done = collect(child, { timeoutMs: 60_000 });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const lines = () => out.split("\n").filter(Boolean);
    const until = async (n: number) => {
      for (let i = 0; i < 300 && lines().length < n; i++) await new Promise((r) => setTimeout(r, 50));
      expect(lines().length).toBe(n);
    };
    const existing = readAudit(inst).length;
    await until(existing);
    await deniedElevation(["/usr/bin/id", "-g"]);
    await until(existing + 1);
    // Rotation as logrotate does it: rename; the shim creates a new file on its next write.
    renameSync(inst.auditLog, `${inst.auditLog}.1`);
    await deniedElevation(["/usr/bin/id", "-n"]);
    await until(existing + 2);
    expect(JSON.parse(lines().at(-1)!).argv).toEqual(["/usr/bin/id", "-n"]);
    child.kill("SIGINT");
    const r = await done;
    expect(r.signal).toBeNull();
    expect(r.code, r.stderr).toBe(0);
  }, 90_000);
});
