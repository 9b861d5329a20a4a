import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
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
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { processStopped } from "../../nest/agents.ts";
import { fingerprint, parsePrivateKey } from "../../protocol/keys.ts";
import { addUser, type IdpHandle, newKey, startIdp } from "../helpers/idp.ts";
import {
  collect,
  ensureTestUser,
  installIntoTempPrefix,
  type ShimInstall,
  spawnAsUser,
  type UnixUser,
} from "../helpers/shim.ts";

/**
 * The Nest's host side with the real installed executable in a temporary prefix (its paths come
 * from the install's paths.json, never from argv or the environment) and real users: `apes daemon
 * init` (the _apes-nest service user, its HOME and key, idempotent), `apes daemon install` (the unit
 * passes `systemd-analyze verify`; exposure checked), `apes agents provision|run|deprovision` (a real
 * agent user; pause/resume through `agents run`'s control channel, seen in /proc), and `apes daemon
 * adopt` against a real IdP (the moved key is the one auth.json names, and renewal works after the
 * old directory is gone). Needs root (CI runs as root).
 */

const execFileP = promisify(execFile);
const NEST_USER = "_apes-nest";
let inst: ShimInstall;
let tester: UnixUser;
const agentName = `nb${randomBytes(3).toString("hex")}`;
const made: string[] = [];

function run(args: string[], env: Record<string, string> = {}) {
  return execFileP(inst.exec, args, { env: { PATH: "/usr/bin:/bin", ...env } }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({
      code: e.code,
      stdout: e.stdout,
      stderr: e.stderr,
    }),
  );
}

function passwd(name: string): string[] | undefined {
  try {
    return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
  } catch {
    return undefined;
  }
}

const nestHome = () => join(inst.var, "lib", "apes-nest");

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the nest e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  tester = ensureTestUser();
});

afterAll(async () => {
  for (const u of made) if (passwd(u)) execFileSync("userdel", [u]);
  await inst?.cleanup();
});

describe("apes daemon init", () => {
  it("refuses to run as a normal user", async () => {
    const r = await collect(
      spawnAsUser(tester, [inst.exec, "daemon", "init"], { env: { PATH: "/usr/bin:/bin", HOME: "/tmp" } }),
    );
    expect(r.code, r.stderr).toBe(77);
    expect(r.stderr).toMatch(/must run as root/);
  });

  it("creates _apes-nest (no shell), its HOME (0700) and its own key; prints the owner's two commands", async () => {
    const r = await run([
      "--json",
      "daemon",
      "init",
      "--idp",
      "https://id.example.com",
      "--troop",
      "https://troop.example.com",
      "--owner",
      "alice@example.com",
      "--host",
      "web1",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    const pw = passwd(NEST_USER)!;
    expect(Number(pw[2])).toBeLessThan(1000);
    expect(pw[6]).toBe("/usr/sbin/nologin");
    const home = statSync(nestHome());
    expect(home.mode & 0o777).toBe(0o700);
    expect(home.uid).toBe(Number(pw[2]));
    const keyPath = join(nestHome(), ".config", "apes", "id_ed25519");
    expect(out.key_path).toBe(keyPath);
    const key = statSync(keyPath);
    expect([key.mode & 0o777, key.uid]).toEqual([0o600, Number(pw[2])]);
    expect(fingerprint(parsePrivateKey(readFileSync(keyPath, "utf8")))).toBe(out.fingerprint);
    expect(out.email).toBe("nest-web1+agent@example.com");
    expect(out.enroll).toBe(`apes agents add --name nest-web1 --key "${out.public_key}"`);
    expect(out.delegate).toBe(
      "apes delegate --to nest-web1+agent@example.com --audience apes-cli --approval always",
    );
    const cfg = statSync(join(inst.etc, "apes", "nest.toml"));
    expect([cfg.uid, cfg.mode & 0o777]).toEqual([0, 0o644]);
    expect(readFileSync(join(inst.etc, "apes", "nest.toml"), "utf8")).toContain(
      'troop_audience = "troop.example.com"',
    );
  });

  it("is idempotent: a second run keeps the user and the key, and records the delegation", async () => {
    const before = readFileSync(join(nestHome(), ".config", "apes", "id_ed25519"), "utf8");
    const r = await run(["--json", "daemon", "init", "--delegation", "0b5e0b5e-0b5e-4b5e-8b5e-0b5e0b5e0b5e"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ created_key: false, email: "nest-web1+agent@example.com" });
    expect(readFileSync(join(nestHome(), ".config", "apes", "id_ed25519"), "utf8")).toBe(before);
    const text = readFileSync(join(inst.etc, "apes", "nest.toml"), "utf8");
    expect(text).toContain('delegation = "0b5e0b5e-0b5e-4b5e-8b5e-0b5e0b5e0b5e"');
    expect(text).toContain('idp = "https://id.example.com"');
  });

  it("refuses bad settings without touching anything", async () => {
    expect((await run(["daemon", "init", "--troop", "http://troop.example.com"])).code).toBe(2);
    expect((await run(["daemon", "init", "--host", "Bad Host"])).code).toBe(2);
    expect((await run(["daemon", "init", "--delegation", "../../etc"])).code).toBe(2);
  });
});

describe("apes daemon install", () => {
  let unitPath: string;
  it("writes the unit (0644) that runs `daemon run` as _apes-nest", async () => {
    const r = await run(["--json", "daemon", "install"]);
    expect(r.code, r.stderr).toBe(0);
    unitPath = JSON.parse(r.stdout).unit;
    expect(unitPath).toBe(join(inst.prefix, "lib", "systemd", "system", "apes-nest.service"));
    expect(statSync(unitPath).mode & 0o777).toBe(0o644);
    const text = readFileSync(unitPath, "utf8");
    expect(text).toContain(`ExecStart=${inst.exec} daemon run`);
    expect(text).toContain("User=_apes-nest");
    expect(text).toContain(`Environment=HOME=${nestHome()}`);
  });

  it("passes systemd-analyze verify, and its exposure stays where the setuid path puts it", async () => {
    const verify = await execFileP("systemd-analyze", ["verify", unitPath]).catch(
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect({ code: "code" in verify ? verify.code : 0, output: `${verify.stdout}${verify.stderr}` }).toEqual({
      code: 0,
      output: "",
    });
    // Shown as 3.1 (the IdP's unit: 1.7), 31 here; above 3.5 someone weakened it further. The gap is the
    // price of the setuid path (NoNewPrivileges=no, capabilities, a writable /etc): cli/daemon/unit.ts.
    const security = await execFileP("systemd-analyze", [
      "security",
      "--offline=true",
      "--threshold=35",
      unitPath,
    ]).catch((e: { code: number; stdout: string; stderr: string }) => e);
    const summary = /Overall exposure level.*$/m.exec(security.stdout)?.[0] ?? security.stderr;
    expect({ code: "code" in security ? security.code : 0, summary }).toMatchObject({ code: 0 });
  });
});

describe("apes agents provision | run | deprovision", () => {
  const agentHome = () => join(inst.var, "lib", "apes-agents", agentName);
  const spec = () => join(inst.etc, "apes", "agents", `${agentName}.json`);

  it("provisions a real agent user with its HOME and key; again with the same spec changes nothing", async () => {
    made.push(agentName);
    mkdirSync(join(inst.etc, "apes", "secrets"), { recursive: true });
    writeFileSync(join(inst.etc, "apes", "secrets", "apikey"), "s3cret-value\n", { mode: 0o600 });
    const args = [
      "--json",
      "agents",
      "provision",
      agentName,
      "--owner",
      "alice@example.com",
      "--secret",
      "apikey",
      "--",
      "/bin/sleep",
      "1000",
    ];
    const r = await run(args);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({
      name: agentName,
      email: `${agentName}+agent@example.com`,
      owner: "alice@example.com",
      argv: ["/bin/sleep", "1000"],
      created_key: true,
    });
    const pw = passwd(agentName)!;
    expect(pw[5]).toBe(agentHome());
    expect(pw[6]).toBe("/usr/sbin/nologin");
    const home = statSync(agentHome());
    expect([home.uid, home.mode & 0o777]).toEqual([Number(pw[2]), 0o700]);
    const secret = statSync(join(agentHome(), ".config", "apes", "secrets", "apikey"));
    expect([secret.uid, secret.mode & 0o777]).toEqual([Number(pw[2]), 0o400]);
    const s = statSync(spec());
    expect([s.uid, s.mode & 0o777]).toEqual([0, 0o644]);
    expect(readFileSync(spec(), "utf8")).not.toContain("s3cret");
    const again = await run(args);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({
      created_key: false,
      created_user: false,
      fingerprint: out.fingerprint,
    });
  });

  it("refuses another spec over an existing agent, a user it did not make, bad names and missing secrets", async () => {
    const other = await run([
      "agents",
      "provision",
      agentName,
      "--owner",
      "alice@example.com",
      "--",
      "/bin/true",
    ]);
    expect(other.code).toBe(78);
    expect(other.stderr).toMatch(/another spec/);
    const root = await run([
      "agents",
      "provision",
      "root",
      "--owner",
      "alice@example.com",
      "--",
      "/bin/true",
    ]);
    expect(root.code).toBe(77);
    expect(passwd("root")![5]).toBe("/root");
    expect(
      (await run(["agents", "provision", "Bad", "--owner", "alice@example.com", "--", "/bin/true"])).code,
    ).toBe(2);
    expect(
      (await run(["agents", "provision", "nbx", "--owner", "alice@example.com", "--", "relative/prog"])).code,
    ).toBe(2);
    const missing = await run([
      "agents",
      "provision",
      "nbx",
      "--owner",
      "alice@example.com",
      "--secret",
      "nope",
      "--",
      "/bin/true",
    ]);
    expect(missing.code).toBe(78);
    expect(passwd("nbx")).toBeUndefined();
  });

  it("`agents run` as the agent: starts the program in its own group, obeys pause/resume (seen in /proc), ends at EOF", async () => {
    const pw = passwd(agentName)!;
    const agent = { name: agentName, uid: Number(pw[2]), gid: Number(pw[3]) };
    const child = spawnAsUser(agent, [inst.exec, "agents", "run", agentName], {
      env: { PATH: "/usr/bin:/bin", HOME: agentHome() },
    });
    const events: Record<string, unknown>[] = [];
    createInterface({ input: child.stdout! }).on("line", (l) => events.push(JSON.parse(l)));
    const until = async (what: string, probe: () => unknown) => {
      const end = Date.now() + 15_000;
      while (!probe()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until("started", () => events.some((e) => e.event === "started"));
    const pid = events.find((e) => e.event === "started")!.pid as number;
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    expect(Number(/^Uid:\s+(\d+)/m.exec(status)![1])).toBe(agent.uid);
    child.stdin!.write("pause\n");
    await until("paused", () => events.some((e) => e.event === "paused"));
    expect(await processStopped(pid)).toBe(true);
    child.stdin!.write("resume\n");
    await until("resumed", () => events.some((e) => e.event === "resumed"));
    expect(await processStopped(pid)).toBe(false);
    child.stdin!.end();
    await until("exited", () => events.some((e) => e.event === "exited"));
    await until("program gone", () => !existsSync(`/proc/${pid}`));
  });

  it("`agents run` with an env allow-list: takes the values from its first stdin line, only listed names, else does not start", async () => {
    const envAgent = `ne${randomBytes(3).toString("hex")}`;
    made.push(envAgent);
    const home = join(inst.var, "lib", "apes-agents", envAgent);
    const prov = await run([
      "--json",
      "agents",
      "provision",
      envAgent,
      "--owner",
      "alice@example.com",
      "--env",
      "BOT_WORD",
      "--",
      "/bin/sh",
      "-c",
      'printf %s "$BOT_WORD" > "$HOME/word"',
    ]);
    expect(prov.code, prov.stderr).toBe(0);
    const pw = passwd(envAgent)!;
    const user = { name: envAgent, uid: Number(pw[2]), gid: Number(pw[3]) };
    const runWith = async (first: string) => {
      const child = spawnAsUser(user, [inst.exec, "agents", "run", envAgent], {
        env: { PATH: "/usr/bin:/bin", HOME: home, BOT_WORD: "from the environment: dropped" },
      });
      let out = "";
      let err = "";
      child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
      child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
      child.stdin!.write(first);
      const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
      return { code, out, err };
    };
    const bad = await runWith('env {"OTHER":"x"}\n');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/not allowed/);
    expect(bad.out).not.toContain("started");
    const notEnv = await runWith("pause\n");
    expect(notEnv.code).toBe(2);
    expect(notEnv.out).not.toContain("started");
    expect(existsSync(join(home, "word"))).toBe(false);
    const ok = await runWith('env {"BOT_WORD":"hello agent"}\n');
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toContain('"event":"started"');
    expect(readFileSync(join(home, "word"), "utf8")).toBe("hello agent");
  });

  it("`agents run` refuses any other user", async () => {
    const r = await collect(
      spawnAsUser(tester, [inst.exec, "agents", "run", agentName], {
        env: { PATH: "/usr/bin:/bin", HOME: "/tmp" },
      }),
    );
    expect(r.code).toBe(77);
  });

  it("deprovision ends the agent's processes and removes its user, HOME and spec", async () => {
    const pw = passwd(agentName)!;
    const child = spawnAsUser({ name: agentName, uid: Number(pw[2]), gid: Number(pw[3]) }, [
      "/bin/sleep",
      "1000",
    ]);
    // Once setpriv has become the agent (its uid in /proc), the process is the agent's.
    const end = Date.now() + 10_000;
    while (
      Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) !== Number(pw[2])
    ) {
      if (Date.now() > end) throw new Error("the process never became the agent");
      await new Promise((r) => setTimeout(r, 20));
    }
    const gone = new Promise((res) => child.once("exit", res));
    const r = await run(["--json", "agents", "deprovision", agentName]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).killed).toBeGreaterThanOrEqual(1);
    await gone;
    expect(passwd(agentName)).toBeUndefined();
    expect(existsSync(agentHome())).toBe(false);
    expect(existsSync(spec())).toBe(false);
    expect((await run(["agents", "deprovision", agentName])).code).toBe(0);
  });
});

describe("apes daemon adopt", () => {
  let idp: IdpHandle;
  const email = "nest-old+agent@example.com";
  afterAll(async () => {
    await idp?.stop();
  });

  it("moves key and session into the Nest's HOME; the session names the new key path and renews after the old dir is gone", async () => {
    const k = newKey(email);
    const dataDir = join(mkdtempSync(join(tmpdir(), "apes-nest-adopt-idp-")), "data");
    await addUser(dataDir, "alice@example.com");
    await addUser(dataDir, email, { agent: true, owner: "alice@example.com", publicKey: k.publicLine });
    idp = await startIdp({ dataDir, tokenTtl: "4s" });
    // The old place: someone's HOME, logged in there with the key next to auth.json.
    const oldHome = mkdtempSync(join(tmpdir(), "apes-nest-oldhome-"));
    const oldDir = join(oldHome, ".config", "apes");
    mkdirSync(oldDir, { recursive: true, mode: 0o700 });
    const oldKey = join(oldDir, "id_ed25519");
    const { formatOpenSshPrivateKey } = await import("../../protocol/keys.ts");
    writeFileSync(oldKey, formatOpenSshPrivateKey(k.privateKey, email), { mode: 0o600 });
    const login = await run(["login", email, "--key", oldKey, "--idp", idp.url], { HOME: oldHome });
    expect(login.code, login.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(oldDir, "auth.json"), "utf8")).key_path).toBe(oldKey);

    const r = await run(["--json", "daemon", "adopt", oldDir]);
    expect(r.code, r.stderr).toBe(0);
    const newKeyPath = join(nestHome(), ".config", "apes", "id_ed25519");
    expect(JSON.parse(r.stdout)).toMatchObject({ key_path: newKeyPath, moved_from: oldKey });
    const authPath = join(nestHome(), ".config", "apes", "auth.json");
    const auth = JSON.parse(readFileSync(authPath, "utf8"));
    expect(auth.key_path).toBe(newKeyPath);
    expect(auth.email).toBe(email);
    const pw = passwd(NEST_USER)!;
    expect(statSync(authPath).uid).toBe(Number(pw[2]));
    expect(existsSync(oldKey)).toBe(false);

    rmSync(oldHome, { recursive: true, force: true });
    await new Promise((res) => setTimeout(res, 3000)); // past half of the 4 s token: renewal due
    const who = await collect(
      spawnAsUser(
        { name: NEST_USER, uid: Number(pw[2]), gid: Number(pw[3]) },
        [inst.exec, "--json", "whoami"],
        {
          env: { PATH: "/usr/bin:/bin", HOME: nestHome() },
        },
      ),
    );
    expect(who.code, who.stderr).toBe(0);
    const renewed = JSON.parse(readFileSync(authPath, "utf8"));
    expect(renewed.token).not.toBe(auth.token);
    expect(renewed.key_path).toBe(newKeyPath);

    const status = await run(["--json", "daemon", "status"]);
    expect(status.code).toBe(69); // set up, not running
    expect(JSON.parse(status.stdout).session).toMatchObject({
      email,
      key_path: newKeyPath,
      key_path_ok: true,
    });
  });

  it("refuses a directory without a session", async () => {
    const empty = mkdtempSync(join(tmpdir(), "apes-nest-empty-"));
    chmodSync(empty, 0o700);
    chownSync(empty, 0, 0);
    expect((await run(["daemon", "adopt", empty])).code).toBe(78);
  });
});
