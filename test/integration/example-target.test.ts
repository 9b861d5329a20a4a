import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addUser, type IdpHandle, startIdp } from "../helpers/idp.ts";
import { type CliUser, cliUser } from "./cli-helpers.ts";

// The whole grant flow with real processes: the agent asks with the real dist/apes, its owner
// approves with it, the agent calls the example target service (examples/target/server.ts, run
// by Node), which verifies the AuthZ-JWT through client/verify-grant.ts; the replay is refused.

const SERVER = join(import.meta.dirname, "..", "..", "examples", "target", "server.ts");
let idp: IdpHandle;
let alice: CliUser;
let agent: CliUser;
let target: ChildProcess;
let targetUrl: string;
let targetOut = "";

beforeAll(async () => {
  idp = await startIdp();
  alice = cliUser("alice@example.com", idp.url);
  agent = cliUser("agent@example.com", idp.url);
  await addUser(idp.dataDir, alice.email, { publicKey: alice.publicLine });
  await addUser(idp.dataDir, agent.email, { agent: true, owner: alice.email, publicKey: agent.publicLine });
  for (const u of [alice, agent]) {
    const r = await u.run(["login", u.email]);
    if (r.code !== 0) throw new Error(`login ${u.email}: ${r.stderr}`);
  }
  target = spawn(process.execPath, [SERVER], {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      APES_ISSUER: idp.issuer,
      TARGET_NAME: "prod-server",
      PORT: "0",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  target.stdout!.on("data", (c) => {
    targetOut += c;
  });
  targetUrl = await new Promise<string>((resolve, reject) => {
    let err = "";
    const timer = setTimeout(() => reject(new Error(`the target did not start:\n${err}`)), 20_000);
    target.stderr!.on("data", (c) => {
      err += c;
      const m = /"url":"([^"]+)"/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    target.once("exit", (code) => reject(new Error(`the target exited (${code}):\n${err}`)));
  });
});

afterAll(async () => {
  target?.kill("SIGTERM");
  await idp?.stop();
});

async function ask(args: string[]): Promise<{ id: string; jwt: string }> {
  const req = await agent.run(["grants", "request", ...args]);
  expect(req.code, req.stderr).toBe(0);
  const id = req.stdout.trim();
  const ok = await alice.run(["grants", "approve", id]);
  expect(ok.code, ok.stderr).toBe(0);
  const token = await agent.run(["grants", "token", id]);
  expect(token.code, token.stderr).toBe(0);
  return { id, jwt: token.stdout.trim() };
}

const deploy = async (jwt?: string) => {
  const res = await fetch(`${targetUrl}/deploy`, {
    method: "POST",
    headers: jwt ? { authorization: `Bearer ${jwt}` } : {},
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

describe("examples/target: a service that deploys only with an approved grant", () => {
  it("agent requests, human approves, the agent deploys once; the replay is refused", async () => {
    const { id, jwt } = await ask([
      "--target",
      "prod-server",
      "--permission",
      "deploy",
      "--reason",
      "Deploy hotfix #123",
    ]);
    // The approver's view names the permission as a permission, not as a command.
    const list = await alice.run(["grants", "list"]);
    expect(list.stdout).toMatch(new RegExp(`${id}.*prod-server.*permissions: deploy`));
    const show = await alice.run(["grants", "show", id]);
    expect(show.stdout).toMatch(/permissions:\s+deploy/);
    expect(show.stdout).toMatch(/target:\s+prod-server/);
    expect(show.stdout).toMatch(/audience:\s+prod-server/);

    const first = await deploy(jwt);
    expect(first).toEqual({
      status: 200,
      body: { deployed: true, grant: id, by: agent.email, approved_by: alice.email },
    });
    expect(targetOut).toContain(`"grant":"${id}"`);
    const replay = await deploy(jwt);
    expect(replay.status).toBe(403);
    expect(replay.body.error).toBe("grant_not_usable");
    expect(targetOut.match(/"deployed":true/g)).toHaveLength(1);
  });

  it("refuses a grant without deploy, one for another system, and no token at all", async () => {
    const other = await ask(["--target", "prod-server", "--permission", "restart"]);
    expect((await deploy(other.jwt)).body.error).toBe("permission_missing");
    const staging = await ask(["--target", "staging", "--permission", "deploy"]);
    expect((await deploy(staging.jwt)).body.error).toBe("audience_not_allowed");
    expect((await deploy()).status).toBe(401);
    expect(targetOut.match(/"deployed":true/g)).toHaveLength(1);
  });
});
