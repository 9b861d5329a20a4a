import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { loadSchemas } from "../../protocol/schemas.ts";
import { addUser, apesBin, type IdpHandle, startIdp } from "../helpers/idp.ts";
import { type CliUser, cliUser, jwtClaims } from "./cli-helpers.ts";

// Agent and owner with separate HOMEs against one real IdP: the whole grant and delegation flow
// through the built binary only.
let idp: IdpHandle;
let alice: CliUser; // human, owns bot
let bob: CliUser; // human, unrelated
let bot: CliUser; // agent
const schemas = loadSchemas();

beforeAll(async () => {
  idp = await startIdp();
  alice = cliUser("alice@example.com", idp.url);
  bob = cliUser("bob@example.com", idp.url);
  bot = cliUser("bot@example.com", idp.url);
  await addUser(idp.dataDir, alice.email, { publicKey: alice.publicLine });
  await addUser(idp.dataDir, bob.email, { publicKey: bob.publicLine });
  await addUser(idp.dataDir, bot.email, { agent: true, owner: alice.email, publicKey: bot.publicLine });
  for (const u of [alice, bob, bot]) {
    const r = await u.run(["login", u.email]);
    if (r.code !== 0) throw new Error(`login ${u.email}: ${r.stderr}`);
  }
});

afterAll(async () => {
  await idp?.stop();
});

/** Starts `apes grants wait` in the background and resolves with its result. */
function waitInBackground(u: CliUser, id: string, extraEnv: Record<string, string> = {}) {
  const p = spawn(apesBin(), ["--json", "--debug", "grants", "wait", id, "--timeout", "50s"], {
    env: { ...u.env, ...extraEnv },
  });
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (c) => {
    stdout += c;
  });
  p.stderr.on("data", (c) => {
    stderr += c;
  });
  const done = new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    p.on("exit", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
  return { done, started: () => stderr.includes("waiting for a decision"), kill: () => p.kill("SIGKILL") };
}

/** Polls cond (every 50 ms, at most 30 s) and fails loudly instead of carrying on when it never holds. */
async function until(cond: () => boolean, what: () => string = () => "the waiter to start"): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gave up waiting for ${what()}`);
}

describe("grants between an agent and its owner", () => {
  it("request -> inbox -> approve (push wait ends) -> token -> show", async () => {
    const argv = ["systemctl", "restart", "nginx"];
    const req = await bot.run(["grants", "request", "--reason", "deploy", "--host", "web1", "--", ...argv]);
    expect(req.code, req.stderr).toBe(0);
    const id = req.stdout.trim();
    expect(id).toMatch(/^[0-9a-f-]{36}$/);

    const waiter = waitInBackground(bot, id);
    await until(waiter.started);

    const inbox = await alice.run(["--json", "grants", "list", "--inbox"]);
    expect(inbox.code, inbox.stderr).toBe(0);
    const pending = JSON.parse(inbox.stdout);
    expect(pending.map((g: { id: string }) => g.id)).toContain(id);
    for (const g of pending) schemas.assert("grant", g);
    const g = pending.find((x: { id: string }) => x.id === id);
    expect(g.request).toMatchObject({
      requester: bot.email,
      target_host: "web1",
      audience: "escapes",
      grant_type: "once",
      command: argv,
      cmd_hash: cmdHash(argv),
      reason: "deploy",
    });
    // The agent's own inbox does not show its own request; an unrelated human cannot see it.
    expect(JSON.parse((await bot.run(["--json", "grants", "list", "--inbox"])).stdout)).toEqual([]);
    expect((await bob.run(["grants", "show", id])).code).toBe(1);

    // The agent cannot approve itself.
    const self = await bot.run(["grants", "approve", id]);
    expect(self.code).toBe(77);

    const ok = await alice.run(["grants", "approve", id]);
    expect(ok.code, ok.stderr).toBe(0);
    const waited = await waiter.done;
    expect(waited.code, waited.stderr).toBe(0);
    expect(JSON.parse(waited.stdout)).toMatchObject({ id, status: "approved", decided_by: alice.email });
    expect(waited.stderr).toContain("push mode");
    expect(waited.stderr).not.toMatch(/Bearer|eyJ/);

    const token = await bot.run(["grants", "token", id]);
    expect(token.code, token.stderr).toBe(0);
    expect(token.stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
    const claims = jwtClaims(token.stdout.trim());
    schemas.assert("authz-jwt-claims", claims);
    expect(claims).toMatchObject({ sub: bot.email, grant_id: id, command: argv, cmd_hash: cmdHash(argv) });

    const show = await alice.run(["grants", "show", id]);
    expect(show.stdout).toContain("status:");
    expect(show.stdout).toContain("approved");
    expect(show.stdout).toContain("systemctl restart nginx");
  });

  it("a denial ends grants wait with 77; revoke after approval too", async () => {
    const id = (await bot.run(["grants", "request", "--", "rm", "-rf", "/var/cache/x"])).stdout.trim();
    const waiter = waitInBackground(bot, id, { APES_NO_PUSH: "1", APES_POLL_INTERVAL_MS: "200" });
    await until(waiter.started);
    expect((await alice.run(["grants", "deny", id])).code).toBe(0);
    const r = await waiter.done;
    expect(r.code).toBe(77);
    expect(r.stderr).toContain(`grant ${id} is denied by ${alice.email}`);
    expect(r.stderr).not.toContain("push mode");

    const id2 = (
      await bot.run(["grants", "request", "--approval", "timed", "--duration", "10m", "--", "uptime"])
    ).stdout.trim();
    expect((await alice.run(["grants", "approve", id2])).code).toBe(0);
    expect((await alice.run(["--json", "grants", "revoke", id2])).stdout).toContain('"revoked"');
    const w2 = await bot.run(["grants", "wait", id2]);
    expect(w2.code).toBe(77);
    expect((await bot.run(["grants", "token", id2])).code).toBe(1);
  });

  it("the approver can change the approval: a once request approved as timed 30m", async () => {
    const id = (await bot.run(["grants", "request", "--", "journalctl", "-u", "nginx"])).stdout.trim();
    const r = await alice.run([
      "--json",
      "grants",
      "approve",
      id,
      "--approval",
      "timed",
      "--duration",
      "30m",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const g = JSON.parse(r.stdout);
    expect(g.status).toBe("approved");
    expect(g.request).toMatchObject({ grant_type: "timed", duration: 1800 });
    expect(g.expires_at - g.decided_at).toBe(1800);
    const bad = await alice.run(["grants", "approve", id, "--approval", "once", "--duration", "5m"]);
    expect(bad.code).toBe(2);
  });

  it("Ctrl-C during `grants request --wait` cancels the pending grant (130)", async () => {
    const p = spawn(apesBin(), ["--json", "grants", "request", "--wait", "--", "reboot"], { env: bot.env });
    let stderr = "";
    p.stderr.on("data", (c) => {
      stderr += c;
    });
    const exited = new Promise<number | string>((resolve) =>
      p.on("exit", (code, signal) => resolve(code ?? `${signal}`)),
    );
    await until(
      () => stderr.includes("waiting for a decision"),
      () => `the waiting line; stderr so far: ${stderr}`,
    );
    p.kill("SIGINT");
    expect(await exited, stderr).toBe(130);
    const id = /grant ([0-9a-f-]{36})/.exec(stderr)?.[1];
    expect(stderr).toContain(`grant ${id} cancelled`);
    const shown = JSON.parse((await bot.run(["--json", "grants", "show", id!])).stdout);
    expect(shown.status).toBe("revoked");
  });

  it("grants wait times out with 75", async () => {
    const id = (await bot.run(["grants", "request", "--", "true"])).stdout.trim();
    const r = await bot.run(["grants", "wait", id, "--timeout", "2s"]);
    expect(r.code).toBe(75);
    expect(r.stderr).toContain("still pending");
  });

  it("an approved timed grant is reused for the same command", async () => {
    const args = [
      "grants",
      "request",
      "--approval",
      "timed",
      "--duration",
      "1h",
      "--host",
      "db1",
      "--",
      "pg_dump",
      "app",
    ];
    const first = (await bot.run(args)).stdout.trim();
    expect((await alice.run(["grants", "approve", first])).code).toBe(0);
    const again = await bot.run(["--json", ...args]);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ id: first, reused: true, status: "approved" });
  });

  it("the owner lists its agents", async () => {
    const r = await alice.run(["--json", "agents", "list"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).map((a: { email: string }) => a.email)).toContain(bot.email);
  });

  it("the owner enrolls a new agent which then logs in with its key", async () => {
    const newbie = cliUser("placeholder@example.com", idp.url);
    const add = await alice.run([
      "--json",
      "agents",
      "add",
      "--name",
      "ci",
      "--key",
      `${newbie.keyPath}.pub`,
    ]);
    expect(add.code, add.stderr).toBe(0);
    const email = JSON.parse(add.stdout).email as string;
    const login = await newbie.run(["login", email, "--key", newbie.keyPath]);
    expect(login.code, login.stderr).toBe(0);
    expect(JSON.parse((await newbie.run(["--json", "whoami"])).stdout)).toMatchObject({
      email,
      act: "agent",
    });
  });
});

describe("the grants client module against the real IdP (used by elevation)", () => {
  it("batch decides several grants; consume spends a once grant exactly once", async () => {
    const { createContext } = await import("../../cli/context.ts");
    const { grantsClient } = await import("../../client/grants.ts");
    const globals = { json: false, debug: false, color: false };
    const botClient = await grantsClient(createContext(globals, { env: bot.env }));
    const { approvalChoice, ed25519ApprovalProof } = await import("../../cli/grants/approval-proof.ts");
    const aliceCtx = createContext(globals, { env: alice.env });
    const aliceClient = await grantsClient(aliceCtx);
    const base = { target_host: "web2", audience: "escapes", grant_type: "once" as const };
    const a = (await botClient.create({ ...base, command: ["echo", "a"], cmd_hash: cmdHash(["echo", "a"]) }))
      .grant;
    const b = (await botClient.create({ ...base, command: ["echo", "b"], cmd_hash: cmdHash(["echo", "b"]) }))
      .grant;
    const proof = await ed25519ApprovalProof(
      aliceCtx,
      aliceClient.session,
      aliceClient.endpoints,
      a,
      approvalChoice(a, {}),
    );
    const { results } = await aliceClient.batch([
      { id: a.id, action: "approve", proof: { ...proof } },
      { id: b.id, action: "deny" },
    ]);
    expect(results).toEqual([
      expect.objectContaining({ id: a.id, success: true, status: "approved" }),
      expect.objectContaining({ id: b.id, success: true, status: "denied" }),
    ]);
    const { authz_jwt } = await botClient.token(a.id);
    expect(await botClient.consume(a.id, authz_jwt)).toMatchObject({ status: "consumed" });
    expect(await botClient.consume(a.id, authz_jwt)).toMatchObject({ error: "already_consumed" });
    expect((await botClient.get(a.id)).status).toBe("used");
  });
});

describe("foldTokens (the elevation's requester)", () => {
  it("the long poll that reports the approval brings the AuthZ-JWT: token() then makes no request", async () => {
    const { createContext } = await import("../../cli/context.ts");
    const { grantsClient } = await import("../../client/grants.ts");
    const { nodeFetch } = await import("../../client/http.ts");
    const { approvalChoice, ed25519ApprovalProof } = await import("../../cli/grants/approval-proof.ts");
    const globals = { json: false, debug: false, color: false };
    const sent: string[] = [];
    const counting = ((input: string | URL | Request, init?: RequestInit) => {
      sent.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
      return nodeFetch(input, init);
    }) as typeof fetch;
    const botClient = await grantsClient(createContext(globals, { env: bot.env, http: counting }), {
      foldTokens: true,
    });
    const aliceCtx = createContext(globals, { env: alice.env });
    const aliceClient = await grantsClient(aliceCtx);
    const argv = ["echo", "folded"];
    const g = (
      await botClient.create({
        target_host: "web2",
        audience: "escapes",
        grant_type: "once",
        command: argv,
        cmd_hash: cmdHash(argv),
      })
    ).grant;
    const first = await botClient.fetch(g.id);
    const waiting = botClient.fetch(g.id, { waitSeconds: 20, etag: first.etag });
    await new Promise((r) => setTimeout(r, 200));
    const proof = await ed25519ApprovalProof(
      aliceCtx,
      aliceClient.session,
      aliceClient.endpoints,
      g,
      approvalChoice(g, {}),
    );
    await aliceClient.approve(g.id, { proof: { ...proof } });
    expect((await waiting).grant?.status).toBe("approved");
    const before = sent.length;
    const { authz_jwt } = await botClient.token(g.id);
    expect(sent.slice(before)).toEqual([]); // no POST /token
    expect(jwtClaims(authz_jwt)).toMatchObject({ grant_id: g.id, cmd_hash: cmdHash(argv) });
    // Used once: a second token() asks the token endpoint.
    await botClient.token(g.id);
    expect(sent.slice(before)).toEqual([`POST /api/grants/${g.id}/token`]);
    expect(await botClient.consume(g.id, authz_jwt)).toMatchObject({ status: "consumed" });
  });
});

describe("delegations and token exchange", () => {
  it("alice delegates to bot; bot exchanges for a token with sub=alice, act.sub=bot", async () => {
    const d = await alice.run([
      "--json",
      "delegate",
      "--to",
      bot.email,
      "--audience",
      "mail.example.com",
      "--scopes",
      "read,send",
    ]);
    expect(d.code, d.stderr).toBe(0);
    const delegation = JSON.parse(d.stdout);
    schemas.assert("delegation", delegation);
    expect(delegation.request).toMatchObject({
      delegator: alice.email,
      delegate: bot.email,
      scopes: ["read", "send"],
    });

    const listed = JSON.parse((await bot.run(["--json", "delegations", "list"])).stdout);
    expect(listed.map((x: { id: string }) => x.id)).toContain(delegation.id);

    const t = await bot.run([
      "token",
      "exchange",
      "--delegation",
      delegation.id,
      "--audience",
      "mail.example.com",
    ]);
    expect(t.code, t.stderr).toBe(0);
    const claims = jwtClaims(t.stdout.trim());
    expect(claims).toMatchObject({
      sub: alice.email,
      aud: "mail.example.com",
      act: { sub: bot.email },
      delegation_grant: delegation.id,
    });

    // Agents cannot delegate; the wrong audience is refused; after revocation no more tokens.
    expect((await bot.run(["delegate", "--to", alice.email, "--audience", "x"])).code).toBe(77);
    expect(
      (await bot.run(["token", "exchange", "--delegation", delegation.id, "--audience", "other.example"]))
        .code,
    ).not.toBe(0);
    expect((await alice.run(["delegations", "revoke", delegation.id])).code).toBe(0);
    const after = await bot.run([
      "token",
      "exchange",
      "--delegation",
      delegation.id,
      "--audience",
      "mail.example.com",
    ]);
    expect(after.code).not.toBe(0);
    expect(after.stdout).toBe("");
  });
});
