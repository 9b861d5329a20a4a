import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  fetchTrusting,
  type IdpHandle,
  loginWithKey,
  loopbackCert,
  newKey,
  runApes,
  startIdp,
  trustCaIn,
} from "../helpers/idp.ts";
import { installIntoTempPrefix, REPO, readAudit, type ShimInstall, spawnAsUser } from "../helpers/shim.ts";

/**
 * The Nest's privileged steps through the REAL elevation path: the setuid shim installed in a test
 * prefix, a TLS IdP, the owner approving. The real supervisor and elevation launcher run AS _apes-nest
 * (test/e2e/fixtures/nest-supervise.ts): the spawn provisions the agent through the shim (the owner
 * approves that exact command), the Nest enrolls the agent's identity for the owner with a delegated
 * token, and starts it as the agent's own user with an `always` grant approved once. The agent runs
 * `apes whoami` as its own identity, then crashes: it is restarted with backoff using the same
 * grant (no new approval), until the supervisor gives up. Needs root (CI runs as root).
 */

const ALICE = "alice@example.com";
const NEST = "nest-e2e+agent@example.com";
const agent = `na${randomBytes(3).toString("hex")}`;
let inst: ShimInstall;
let idp: IdpHandle;
let aliceHome: string;
let ca: string;
let nestUid = 0;
let nestGid = 0;
let aliceKey: import("node:crypto").KeyObject;
const nestHome = () => join(inst.var, "lib", "apes-nest");

function passwd(name: string): string[] | undefined {
  try {
    return execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim().split(":");
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("the nest e2e tests run as root (CI does)");
  inst = await installIntoTempPrefix();
  const work = mkdtempSync(join(tmpdir(), "apes-nest-elev-"));
  execFileSync("chmod", ["0755", work]);
  const tls = loopbackCert(work);
  ca = tls.cert;
  execFileSync("chmod", ["0644", ca]);
  const dataDir = join(work, "idp");
  const alice = newKey(ALICE);
  aliceKey = alice.privateKey;
  await addUser(dataDir, ALICE, { publicKey: alice.publicLine });
  idp = await startIdp({ dataDir, tls });
  // The Nest: init as root, then its owner enrolls it (here: the IdP admin command with its key).
  const init = JSON.parse(
    execFileSync(
      inst.exec,
      [
        "--json",
        "daemon",
        "init",
        "--idp",
        idp.url,
        "--troop",
        "https://127.0.0.1:9",
        "--owner",
        ALICE,
        "--host",
        "e2e",
        "--ca-file",
        ca,
      ],
      {
        encoding: "utf8",
      },
    ),
  );
  expect(init.email).toBe(NEST);
  await addUser(dataDir, NEST, { agent: true, owner: ALICE, publicKey: init.public_key });
  const pw = passwd("_apes-nest")!;
  nestUid = Number(pw[2]);
  nestGid = Number(pw[3]);
  trustCaIn(nestHome(), ca, { uid: nestUid, gid: nestGid });
  const login = await runAsNest([inst.exec, "login", NEST, "--key", init.key_path, "--idp", idp.url]);
  expect(login.code, login.stderr).toBe(0);
  // alice: her own HOME, trusting the CA.
  aliceHome = mkdtempSync(join(tmpdir(), "apes-nest-alice-"));
  trustCaIn(aliceHome, ca);
  const { formatOpenSshPrivateKey } = await import("../../protocol/keys.ts");
  const { writeFileSync } = await import("node:fs");
  writeFileSync(join(aliceHome, "id"), formatOpenSshPrivateKey(alice.privateKey, ALICE), { mode: 0o600 });
  expect(
    (await runApes(["login", ALICE, "--key", join(aliceHome, "id"), "--idp", idp.url], { HOME: aliceHome }))
      .code,
  ).toBe(0);
  // The policy: the shim accepts this IdP; alice approves; _apes-nest acts as the Nest; commands may
  // run as root (provision) and as the agent (its program).
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
      `root,${agent}`,
    ],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
}, 120_000);

afterAll(async () => {
  if (passwd(agent)) execFileSync("/usr/sbin/userdel", [agent]);
  await idp?.stop();
  await inst?.cleanup();
});

function runAsNest(argv: string[]) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawnAsUser({ name: "_apes-nest", uid: nestUid, gid: nestGid }, argv, {
      env: { PATH: "/usr/bin:/bin", HOME: nestHome(), LANG: "C.UTF-8" },
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => (stdout += d));
    child.stderr!.on("data", (d) => (stderr += d));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin!.end();
  });
}

async function pendingFor(
  word: string,
): Promise<{ id: string; request: { command: string[]; grant_type: string } } | undefined> {
  const token = await loginWithKey(idp.url, ALICE, aliceKey, fetchTrusting(ca));
  const grants = (await import("../helpers/idp.ts")).discovery;
  const d = await grants(idp.url, fetchTrusting(ca));
  const r = await api(idp.url, token, fetchTrusting(ca)).get(
    `${d.openape_grants_endpoint}?status=pending&limit=100`,
  );
  return (r.body?.data ?? []).find((g: { request: { command?: string[] } }) =>
    g.request.command?.includes(word),
  );
}

describe("the Nest's supervisor through the elevation path", () => {
  it("spawn: provision approved once, identity enrolled for the owner, started as its own user; crash loop restarts on the always grant, then gives up", async () => {
    // The owner's delegation to the Nest for the IdP's own API (enrolling agents for her).
    const del = await runApes(["--json", "delegate", "--to", NEST, "--audience", "apes-cli"], {
      HOME: aliceHome,
    });
    expect(del.code, del.stderr).toBe(0);
    const delegation = JSON.parse(del.stdout).id;
    const script = `${inst.exec} --json whoami | /usr/bin/tr -d "\\n" >> "$HOME/whoami.jsonl"; echo >> "$HOME/whoami.jsonl"; exit 3`;
    const intent = {
      id: "spawn-e2e-1",
      nest: NEST,
      kind: "spawn",
      agent,
      seq: 1,
      submitted_by: ALICE,
      created_at: 1,
      spec: { owner: ALICE, argv: ["/bin/sh", "-c", script], env: [], secrets: [] },
    };
    const node = join(REPO, "node_modules", "node", "bin", "node");
    const driver = spawnAsUser(
      { name: "_apes-nest", uid: nestUid, gid: nestGid },
      [
        node,
        join(REPO, "test", "e2e", "fixtures", "nest-supervise.ts"),
        JSON.stringify({
          shim: inst.shim,
          exec: inst.exec,
          idp: idp.url,
          caFile: ca,
          delegation,
          intent,
          maxFailures: 3,
        }),
      ],
      { env: { PATH: "/usr/bin:/bin", HOME: nestHome(), LANG: "C.UTF-8" } },
    );
    const events: Record<string, unknown>[] = [];
    let stderr = "";
    driver.stderr!.on("data", (d) => (stderr += d));
    createInterface({ input: driver.stdout! }).on("line", (l) => events.push(JSON.parse(l)));
    const until = async <T>(
      what: string,
      probe: () => Promise<T | undefined> | T | undefined,
      ms = 60_000,
    ): Promise<T> => {
      const end = Date.now() + ms;
      for (;;) {
        const v = await probe();
        if (v !== undefined) return v;
        if (Date.now() > end)
          throw new Error(`timed out waiting for ${what}\n${stderr.slice(-3000)}\n${JSON.stringify(events)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    // 1. The provision grant: exactly the command, with the argv, for alice to approve.
    const provision = await until("the provision grant", () => pendingFor("provision"));
    expect(provision.request.command).toEqual([
      inst.exec,
      "--json",
      "agents",
      "provision",
      agent,
      "--owner",
      ALICE,
      "--idp",
      idp.url,
      "--ca-file",
      ca,
      "--",
      "/bin/sh",
      "-c",
      script,
    ]);
    expect((await runApes(["grants", "approve", provision.id], { HOME: aliceHome })).code).toBe(0);
    await until("enrolled", () => events.find((e) => e.event === "enrolled"));
    // 2. The start grant: always, for `agents run <agent>` as the agent.
    const start = await until("the start grant", () => pendingFor("run"));
    expect(start.request).toMatchObject({
      command: [inst.exec, "agents", "run", agent],
      grant_type: "always",
    });
    expect((await runApes(["grants", "approve", start.id], { HOME: aliceHome })).code).toBe(0);
    const final = await until(
      "the supervisor gives up",
      () => events.find((e) => e.event === "final"),
      120_000,
    );
    expect(final.state).toBe("failed");
    const states = events.filter((e) => e.event === "transition").map((e) => e.state);
    expect(states).toEqual(["starting", "running", "backoff", "running", "backoff", "running", "failed"]);
    // No third grant: the restarts used the always grant.
    expect(await pendingFor("run")).toBeUndefined();
    // The agent ran as its own Unix user and its own identity, owned by alice, each of the 3 times.
    const home = join(inst.var, "lib", "apes-agents", agent);
    const whoami = readFileSync(join(home, "whoami.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(whoami).toHaveLength(3);
    for (const w of whoami) expect(w).toMatchObject({ email: `${agent}+agent@example.com` });
    // The audit trail: provision as root and three starts as the agent, all requested by the Nest.
    const audit = readAudit(inst).filter((a) => a.decision === "allow");
    expect(
      audit.map((a) => [
        a.run_as,
        a.argv.includes("provision") ? "provision" : a.argv.includes("run") ? "run" : "?",
        a.sub,
        a.decided_by,
      ]),
    ).toEqual([
      ["root", "provision", NEST, ALICE],
      [agent, "run", NEST, ALICE],
      [agent, "run", NEST, ALICE],
      [agent, "run", NEST, ALICE],
    ]);
    expect(existsSync(join(nestHome(), ".local", "state", "apes", "logs", `${agent}.log`))).toBe(true);
    expect(stderr).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
  }, 200_000);
});
