import { type ChildProcess, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { formatOpenSshPrivateKey } from "../../protocol/keys.ts";
import {
  addUser,
  type IdpHandle,
  loopbackCert,
  newKey,
  runApes,
  startIdp,
  trustCaIn,
} from "../helpers/idp.ts";
import { installIntoTempPrefix, readAudit, type ShimInstall, spawnAsUser } from "../helpers/shim.ts";
import { startTroop, TROOP_AUDIENCE, type TroopHandle } from "../helpers/troop.ts";

/**
 * IdP, troop and Nest as real processes: the Nest (`apes daemon run` as _apes-nest, set up by
 * `apes daemon init`) connects to the troop with its own token; alice spawns an agent with
 * `apes nest spawn --approve`; the agent runs `apes whoami` and asks for a grant as its own identity;
 * a troop restart drops the socket and the Nest comes back; a kill -9 of the Nest while a spawn is in
 * flight (acked, waiting for approval) ends with the agent started once; a kill -9 with the agent
 * running brings it back in the next run, through its `always` grant, no new approval. The shim is installed in a
 * test prefix; the IdP speaks TLS. Needs root (CI runs as root).
 */

const ALICE = "alice@example.com";
const NEST = "nest-tt+agent@example.com";
const a1 = `nt${randomBytes(3).toString("hex")}`;
const a2 = `nu${randomBytes(3).toString("hex")}`;
const a3 = `nv${randomBytes(3).toString("hex")}`;
let inst: ShimInstall;
let idp: IdpHandle;
let troop: TroopHandle;
let aliceHome: string;
let ca: string;
let nestUid = 0;
let nestGid = 0;
let nest: ChildProcess | undefined;
let nestLog = "";
const nestHome = () => join(inst.var, "lib", "apes-nest");
const agentHome = (a: string) => join(inst.var, "lib", "apes-agents", a);

function passwd(name: string): string[] | undefined {
  try {
    return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
  } catch {
    return undefined;
  }
}

const alice = (args: string[]) =>
  runApes(args, { HOME: aliceHome, APES_TROOP: troop.url, APES_TROOP_AUDIENCE: TROOP_AUDIENCE });

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  ms = 60_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end)
      throw new Error(`timed out waiting for ${what}\n--- nest log:\n${nestLog.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function startNest(): void {
  const child = spawnAsUser(
    { name: "_apes-nest", uid: nestUid, gid: nestGid },
    [inst.exec, "daemon", "run"],
    {
      // What the operator gives the unit: BOT_GREETING may be passed to an agent that lists it.
      env: {
        PATH: "/usr/bin:/bin",
        HOME: nestHome(),
        LANG: "C.UTF-8",
        BOT_GREETING: "hello from the nest",
        NOT_LISTED: "never passed",
      },
    },
  );
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    nestLog += d;
  });
  nest = child;
}

const connects = () => nestLog.split("\n").filter((l) => l.includes('"msg":"connected to the troop"')).length;

async function nestsAsAlice(): Promise<{ id: string; connected: boolean }[]> {
  const r = await alice(["--json", "nest", "list"]);
  return r.code === 0 ? JSON.parse(r.stdout) : [];
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the nest e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  const work = mkdtempSync(join(tmpdir(), "apes-nest-troop-"));
  execFileSync("chmod", ["0755", work]);
  const tls = loopbackCert(work);
  ca = tls.cert;
  execFileSync("chmod", ["0644", ca]);
  const dataDir = join(work, "idp");
  const key = newKey(ALICE);
  await addUser(dataDir, ALICE, { publicKey: key.publicLine });
  idp = await startIdp({ dataDir, tls });
  troop = await startTroop(idp.issuer, { extraArgs: ["--idp-ca", ca] });
  aliceHome = mkdtempSync(join(tmpdir(), "apes-nest-troop-alice-"));
  trustCaIn(aliceHome, ca);
  writeFileSync(join(aliceHome, "id"), formatOpenSshPrivateKey(key.privateKey, ALICE), { mode: 0o600 });
  expect((await alice(["login", ALICE, "--key", join(aliceHome, "id"), "--idp", idp.url])).code).toBe(0);

  // The Nest, as an operator sets it up: init (root), the owner enrolls it and delegates to it.
  const initArgs = [
    "--json",
    "daemon",
    "init",
    "--idp",
    idp.url,
    "--troop",
    troop.url,
    "--troop-audience",
    TROOP_AUDIENCE,
  ];
  const init = JSON.parse(
    execFileSync(inst.exec, [...initArgs, "--owner", ALICE, "--host", "tt", "--ca-file", ca], {
      encoding: "utf8",
    }),
  );
  expect(init.email).toBe(NEST);
  const enroll = await alice(["--json", "agents", "add", "--name", "nest-tt", "--key", init.public_key]);
  expect(enroll.code, enroll.stderr).toBe(0);
  const del = await alice(["--json", "delegate", "--to", NEST, "--audience", "apes-cli"]);
  expect(del.code, del.stderr).toBe(0);
  execFileSync(inst.exec, ["daemon", "init", "--delegation", JSON.parse(del.stdout).id], { stdio: "ignore" });
  const pw = passwd("_apes-nest")!;
  nestUid = Number(pw[2]);
  nestGid = Number(pw[3]);
  trustCaIn(nestHome(), ca, { uid: nestUid, gid: nestGid });
  execFileSync(
    inst.shim,
    [
      "trust",
      "--idp",
      idp.url,
      "--ca-file",
      ca,
      "--approvers",
      ALICE,
      "--map",
      `_apes-nest=${NEST}`,
      "--run-as",
      `root,${a1},${a2},${a3}`,
    ],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  startNest();
  await until("the nest connected", () => connects() >= 1);
}, 180_000);

afterAll(async () => {
  nest?.kill("SIGKILL");
  // A kill -9 leaves the shim the nest had started (waiting for approval): end it.
  for (const pid of execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" }).split("\n")) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(pid);
    if (m && m[2]!.includes(inst.root)) {
      try {
        process.kill(Number(m[1]), "SIGKILL");
      } catch {}
    }
  }
  for (const a of [a1, a2, a3]) if (passwd(a)) execFileSync("/usr/sbin/userdel", [a]);
  await troop?.stop();
  await idp?.stop();
  await inst?.cleanup();
});

describe("IdP + troop + Nest", () => {
  it("the Nest is connected, as its own identity, and only alice's nest is listed for her", async () => {
    const nests = await until("nest listed", async () =>
      (await nestsAsAlice()).find((n) => n.id === NEST && n.connected),
    );
    expect(nests.id).toBe(NEST);
    const status = await runApes(["--json", "daemon", "status"]).catch(() => undefined);
    expect(status).toBeDefined();
    expect(nestLog).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
  });

  it("spawn -> approval -> the agent runs `apes whoami` and asks for a grant as its own identity", async () => {
    const script = [
      `${inst.exec} --json whoami | /usr/bin/tr -d "\\n" > "$HOME/whoami.json"`,
      `${inst.exec} --json grants request --reason "agent asks as itself" -- /usr/bin/id > "$HOME/grant.json"`,
      "exec /bin/sleep 1000",
    ].join("; ");
    const r = await alice([
      "--json",
      "nest",
      "spawn",
      NEST,
      a1,
      "--approve",
      "--timeout",
      "90",
      "--",
      "/bin/sh",
      "-c",
      script,
    ]);
    expect(r.code, `${r.stderr}\n${nestLog.slice(-3000)}`).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ state: "done", kind: "spawn", submitted_by: ALICE });
    expect(out.approved).toHaveLength(2);
    const who = JSON.parse(
      await until("whoami", () =>
        existsSync(join(agentHome(a1), "whoami.json"))
          ? readFileSync(join(agentHome(a1), "whoami.json"), "utf8") || undefined
          : undefined,
      ),
    );
    expect(who).toMatchObject({ email: `${a1}+agent@example.com` });
    const grant = await until("grant request", () => {
      try {
        return JSON.parse(readFileSync(join(agentHome(a1), "grant.json"), "utf8"));
      } catch {
        return undefined;
      }
    });
    expect(grant.request).toMatchObject({ requester: `${a1}+agent@example.com` });
    const agents = JSON.parse((await alice(["--json", "nest", "status", NEST])).stdout);
    expect(agents).toEqual([expect.objectContaining({ name: a1, state: "running" })]);
    // The audit trail: the Nest requested, alice decided, root for provision, the agent for its program.
    const allow = readAudit(inst).filter((l) => l.decision === "allow");
    expect(allow.map((l) => [l.sub, l.decided_by, l.run_as])).toEqual([
      [NEST, ALICE, "root"],
      [NEST, ALICE, a1],
    ]);
  }, 150_000);

  it("pause and resume through the troop are real (the kernel shows the agent stopped); remove ends it", async () => {
    const pidOf = async () => {
      const r = await alice(["--json", "nest", "status", NEST]);
      return (JSON.parse(r.stdout) as { name: string; pid?: number; state: string }[]).find(
        (a) => a.name === a1,
      );
    };
    const { processStopped } = await import("../../nest/agents.ts");
    const pid = (await pidOf())!.pid!;
    const paused = await alice(["--json", "nest", "pause", NEST, a1]);
    expect(paused.code, paused.stderr).toBe(0);
    expect(await processStopped(pid)).toBe(true);
    await until("reported paused", async () => ((await pidOf())?.state === "paused" ? true : undefined));
    const resumed = await alice(["--json", "nest", "resume", NEST, a1]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(await processStopped(pid)).toBe(false);
    // remove: the Nest asks for `apes agents deprovision` through the shim; alice approves it.
    const removing = alice(["--json", "nest", "remove", NEST, a1, "--timeout", "60"]);
    const grant = await until("the deprovision grant", async () => {
      const r = await alice(["--json", "grants", "list", "--status", "pending"]);
      const list =
        r.code === 0 ? (JSON.parse(r.stdout) as { id: string; request: { command?: string[] } }[]) : [];
      return list.find((g) => g.request.command?.includes("deprovision"));
    });
    expect(grant.request.command).toEqual([inst.exec, "agents", "deprovision", a1]);
    expect((await alice(["grants", "approve", grant.id])).code).toBe(0);
    const removed = await removing;
    expect(removed.code, removed.stderr).toBe(0);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(passwd(a1)).toBeUndefined();
  }, 120_000);

  it("a troop restart drops the socket; the Nest reconnects with backoff", async () => {
    const before = connects();
    await troop.restart();
    await until("reconnected", () => connects() > before, 60_000);
    await until("listed as connected", async () =>
      (await nestsAsAlice()).find((n) => n.id === NEST && n.connected),
    );
  }, 90_000);

  it("kill -9 of the Nest with a spawn in flight: after the restart the agent is started once", async () => {
    const script = `echo started >> "$HOME/starts"; exec /bin/sleep 1000`;
    const submit = await alice([
      "--json",
      "nest",
      "spawn",
      NEST,
      a2,
      "--no-wait",
      "--id",
      "spawn-inflight",
      "--",
      "/bin/sh",
      "-c",
      script,
    ]);
    expect(submit.code, submit.stderr).toBe(0);
    // In flight: acked and waiting for alice's approval of the provision grant.
    await until("acked", async () => {
      const r = await alice(["--json", "nest", "logs", NEST]);
      const i = JSON.parse(r.stdout).find((x: { id: string }) => x.id === "spawn-inflight");
      return i && i.state !== "queued" && i.state !== "delivered" ? i : undefined;
    });
    nest!.kill("SIGKILL");
    await new Promise((r) => nest!.once("exit", r));
    startNest();
    // Approve whatever the Nest (old and new run) asks for this agent; then the result.
    const r = await alice([
      "--json",
      "nest",
      "spawn",
      NEST,
      a2,
      "--approve",
      "--id",
      "spawn-inflight",
      "--timeout",
      "90",
      "--",
      "/bin/sh",
      "-c",
      script,
    ]);
    expect(r.code, `${r.stderr}\n${nestLog.slice(-3000)}`).toBe(0);
    expect(JSON.parse(r.stdout).state).toBe("done");
    await until("started", () => existsSync(join(agentHome(a2), "starts")));
    await new Promise((res) => setTimeout(res, 2000));
    expect(
      readFileSync(join(agentHome(a2), "starts"), "utf8")
        .trim()
        .split("\n"),
    ).toEqual(["started"]);
  }, 180_000);

  it("kill -9 of the Nest with an agent running: the next run starts it again through its `always` grant", async () => {
    const statusOf = async () => {
      const r = await alice(["--json", "nest", "status", NEST]);
      return (JSON.parse(r.stdout) as { name: string; pid?: number; state: string; restarts: number }[]).find(
        (a) => a.name === a2,
      );
    };
    const before = await until("a2 running", async () => {
      const a = await statusOf();
      return a?.state === "running" && a.pid ? a : undefined;
    });
    const allowsBefore = readAudit(inst).filter((l) => l.decision === "allow" && l.run_as === a2).length;
    nest!.kill("SIGKILL");
    await new Promise((r) => nest!.once("exit", r));
    // `apes agents run` ends the agent when the Nest's pipe closes.
    await until("old agent gone", () => !existsSync(`/proc/${before.pid}`), 15_000);
    startNest();
    // No approval asked: the restart reuses the `always` grant for the exact start command.
    await until("second start", () => {
      const lines = readFileSync(join(agentHome(a2), "starts"), "utf8")
        .trim()
        .split("\n");
      return lines.length === 2 ? lines : undefined;
    });
    const after = await until("reported running again", async () => {
      const a = await statusOf();
      return a?.state === "running" && a.pid && a.pid !== before.pid ? a : undefined;
    });
    expect(after.restarts).toBe(before.restarts + 1);
    expect(readFileSync(`/proc/${after.pid}/status`, "utf8")).toMatch(
      new RegExp(`\\nUid:\\s+${passwd(a2)![2]}\\s`),
    );
    const allows = readAudit(inst).filter((l) => l.decision === "allow" && l.run_as === a2);
    expect(allows.length).toBe(allowsBefore + 1);
    expect(allows.at(-1)).toMatchObject({ sub: NEST, run_as: a2 });
    expect(nestLog).toContain('"msg":"restoring an agent of the previous run"');
  }, 120_000);

  it("the spawn's env allow-list reaches the agent (through its stdin, past the shim's allow-list)", async () => {
    const script = `printf '%s|%s|%s' "$BOT_GREETING" "$NOT_LISTED" "$HOME" > "$HOME/env.txt"; exec /bin/sleep 1000`;
    const r = await alice([
      "--json",
      "nest",
      "spawn",
      NEST,
      a3,
      "--env",
      "BOT_GREETING",
      "--env",
      "HOME",
      "--approve",
      "--timeout",
      "90",
      "--",
      "/bin/sh",
      "-c",
      script,
    ]);
    expect(r.code, `${r.stderr}\n${nestLog.slice(-3000)}`).toBe(0);
    const got = await until("env.txt", () => {
      try {
        return readFileSync(join(agentHome(a3), "env.txt"), "utf8") || undefined;
      } catch {
        return undefined;
      }
    });
    // Listed: passed; not listed: not; HOME is the runner's own, never taken from the Nest.
    expect(got).toBe(`hello from the nest||${agentHome(a3)}`);
    expect(readFileSync(join(nestHome(), ".local", "state", "apes", "agents.json"), "utf8")).not.toContain(
      "hello from the nest",
    );
  }, 150_000);

  it("SIGHUP re-reads nest.toml; SIGTERM drains: agents stopped, exit 0; no token in any log line", async () => {
    nest!.kill("SIGHUP");
    await until("reloaded", () => nestLog.includes('"msg":"settings reloaded"'));
    const status = JSON.parse(
      readFileSync(join(nestHome(), ".local", "state", "apes", "status.json"), "utf8"),
    );
    const pids = (status.status.agents as { pid?: number }[])
      .map((a) => a.pid)
      .filter((p): p is number => !!p);
    expect(pids.length).toBeGreaterThanOrEqual(1);
    const exit = new Promise<number | null>((r) => nest!.once("exit", (code) => r(code)));
    nest!.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(nestLog).toContain('"msg":"stopped"');
    await until("agents gone", () => pids.every((pid) => !existsSync(`/proc/${pid}`)), 15_000);
    for (const line of nestLog.split("\n").filter(Boolean)) {
      expect(() => JSON.parse(line), line).not.toThrow();
      expect(line).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
    }
    nest = undefined;
  }, 60_000);
});
