import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { inboxOf } from "../../cli/commands/grants/list.ts";
import { ExitCode } from "../../cli/exit-codes.ts";
import { clearDiscoveryMemory } from "../../client/discovery.ts";
import { cmdHash } from "../../protocol/cmd-hash.ts";
import { formatOpenSshPrivateKey, formatSshPublicKey } from "../../protocol/keys.ts";
import type { Grant } from "../../protocol/types.ts";
import { type FakeContextOptions, runInProcess, StepClock } from "../helpers/fake-context.ts";
import { fakeIdp } from "./cli-fake-idp.ts";

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "apes-cmd-"));
  clearDiscoveryMemory();
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

interface Actor {
  email: string;
  home: string;
  key: KeyObject;
  keyPath: string;
  run(argv: string[], extra?: FakeContextOptions): Promise<{ code: number; stdout: string; stderr: string }>;
}

function world(options: { noTokenExchange?: boolean; approvalProofs?: boolean } = {}) {
  const clock = new StepClock();
  const idp = fakeIdp({
    now: () => Math.floor(clock.now() / 1000),
    noTokenExchange: options.noTokenExchange,
    approvalProofs: options.approvalProofs,
  });
  const actor = (
    email: string,
    act: "human" | "agent",
    format: "openssh" | "pkcs8" = "openssh",
    owner?: string,
  ): Actor => {
    const home = join(root, email);
    mkdirSync(join(home, ".ssh"), { recursive: true });
    const { privateKey } = generateKeyPairSync("ed25519");
    idp.users.set(email, { key: privateKey, act, owner });
    const keyPath = join(home, ".ssh", "id_ed25519");
    const text =
      format === "openssh"
        ? formatOpenSshPrivateKey(privateKey, email)
        : (privateKey.export({ format: "pem", type: "pkcs8" }) as string);
    writeFileSync(keyPath, text, { mode: 0o600 });
    writeFileSync(`${keyPath}.pub`, `${formatSshPublicKey(privateKey, email)}\n`);
    return {
      email,
      home,
      key: privateKey,
      keyPath,
      run: (argv, extra = {}) =>
        runInProcess(argv, { home, http: idp.http, clock, config: { idp: idp.base }, ...extra }),
    };
  };
  return { clock, idp, actor };
}

async function loggedIn(a: Actor) {
  const r = await a.run(["login", a.email]);
  expect(r.code, r.stderr).toBe(0);
}

describe("apes login / whoami / logout", () => {
  it("logs in with an OpenSSH key from ~/.ssh and records path and fingerprint", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    const r = await bot.run(["login", bot.email]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("logged in as bot@example.test (agent)");
    const file = join(bot.home, ".config/apes/auth.json");
    const stored = JSON.parse(readFileSync(file, "utf8"));
    expect(stored.key_path).toBe(bot.keyPath);
    expect(stored.key_fingerprint).toMatch(/^SHA256:/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const who = await bot.run(["--json", "whoami"]);
    expect(JSON.parse(who.stdout)).toMatchObject({
      email: "bot@example.test",
      act: "agent",
      idp: w.idp.base,
    });
    expect(who.stdout).not.toContain(stored.token);
  });

  it("logs in with a PKCS#8 key and takes the email from the .pub comment", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent", "pkcs8");
    const r = await bot.run(["login", "--key", bot.keyPath]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("bot@example.test");
  });

  it("asks for the email when the .pub has none (exit 2)", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    writeFileSync(`${bot.keyPath}.pub`, formatSshPublicKey(bot.key, "no-email-here"));
    const r = await bot.run(["login", "--key", bot.keyPath]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.stderr).toContain("give the email");
  });

  it("explains what to do with a passphrase-protected key (78)", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    writeFileSync(
      bot.keyPath,
      bot.key.export({ format: "pem", type: "pkcs8", cipher: "aes-256-cbc", passphrase: "pw" }) as string,
    );
    const r = await bot.run(["login", bot.email]);
    expect(r.code).toBe(ExitCode.CONFIG);
    expect(r.stderr).toContain("protected by a passphrase");
    expect(r.stderr).toContain("apes keygen");
  });

  it("refuses plain http to a non-loopback IdP", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    const r = await bot.run(["login", bot.email, "--idp", "http://id.example.test"]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(r.stderr).toContain("plain http only on a loopback address");
  });

  it("logout removes the session; whoami then says how to log in (77)", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    await loggedIn(bot);
    expect((await bot.run(["logout"])).stdout).toContain("logged out bot@example.test");
    const who = await bot.run(["whoami"]);
    expect(who.code).toBe(ExitCode.NOPERM);
    expect(who.stderr).toContain("apes login <email>");
  });

  it("an unreachable IdP gives 69 and names it", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    w.idp.down = true;
    const r = await bot.run(["login", bot.email]);
    expect(r.code).toBe(ExitCode.UNAVAILABLE);
    expect(r.stderr).toContain(`IdP at ${w.idp.base} is unreachable`);
  });
});

describe("apes keygen", () => {
  it("writes an OpenSSH key 0600 and refuses to overwrite without --force", async () => {
    const home = join(root, "k");
    const out = join(home, "key");
    const r = await runInProcess(["keygen", "--out", out, "--comment", "me@example.test"], { home });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ssh-ed25519 \S+ me@example.test\n$/);
    expect(readFileSync(out, "utf8")).toContain("BEGIN OPENSSH PRIVATE KEY");
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const again = await runInProcess(["keygen", "--out", out], { home });
    expect(again.code).toBe(ExitCode.USAGE);
    expect(again.stderr).toContain("--force");
    expect((await runInProcess(["keygen", "--out", out, "--force"], { home })).code).toBe(0);
  });
});

describe("apes grants", () => {
  it("request sends argv, cmd_hash, defaults (escapes, hostname, once) and prints the id", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    await loggedIn(bot);
    const r = await bot.run(["grants", "request", "--reason", "logs", "--", "ls", "-la", "/root dir"]);
    expect(r.code, r.stderr).toBe(0);
    const id = r.stdout.trim();
    const g = w.idp.grants.get(id)!;
    expect(g.request).toMatchObject({
      audience: "escapes",
      grant_type: "once",
      command: ["ls", "-la", "/root dir"],
      cmd_hash: cmdHash(["ls", "-la", "/root dir"]),
      reason: "logs",
    });
    expect(g.request.target_host).toBe((await import("node:os")).hostname());
  });

  it("validates approval and duration before contacting the IdP", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    await loggedIn(bot);
    const before = w.idp.requests.length;
    for (const args of [
      ["--approval", "timed"],
      ["--approval", "sometimes"],
      ["--approval", "once", "--duration", "5m"],
      ["--duration", "soon"],
    ]) {
      const r = await bot.run(["grants", "request", ...args, "--", "ls"]);
      expect(r.code, args.join(" ")).toBe(ExitCode.USAGE);
    }
    expect(w.idp.requests.length).toBe(before);
  });

  it("request --target --permission asks for permissions without a command or an audience", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent");
    await loggedIn(bot);
    const r = await bot.run([
      "grants",
      "request",
      "--target",
      "prod-server",
      "--permission",
      "deploy",
      "--permission",
      "restart",
      "--reason",
      "Deploy hotfix #123",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const body = w.idp.requests.find((q) => q.method === "POST" && q.path === "/api/grants")?.body;
    // The audience is left to the IdP's rule (the target); no command, no cmd_hash.
    expect(body).toEqual({
      target_host: "prod-server",
      grant_type: "once",
      permissions: ["deploy", "restart"],
      reason: "Deploy hotfix #123",
    });
    const before = w.idp.requests.length;
    for (const args of [
      [],
      ["--permission", "deploy"],
      ["--target", "prod-server"],
      ["--target", "prod-server", "--host", "staging", "--permission", "deploy"],
      ["--target", "prod-server", "--permission", ""],
    ]) {
      const bad = await bot.run(["grants", "request", ...args]);
      expect(bad.code, args.join(" ")).toBe(ExitCode.USAGE);
    }
    expect(w.idp.requests.length).toBe(before);
  });

  it("full lifecycle: request, inbox, approve, wait, token (stdout is only the JWT)", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent", "openssh", "alice@example.test");
    const alice = w.actor("alice@example.test", "human");
    const carol = w.actor("carol@example.test", "human");
    await loggedIn(bot);
    await loggedIn(alice);
    await loggedIn(carol);
    const id = (await bot.run(["grants", "request", "--", "systemctl", "restart", "nginx"])).stdout.trim();
    const inbox = await alice.run(["--json", "grants", "list", "--inbox"]);
    expect(JSON.parse(inbox.stdout).map((g: Grant) => g.id)).toEqual([id]);
    const human = await alice.run(["grants", "list", "--inbox"]);
    expect(human.stdout).toContain("systemctl restart nginx");
    expect((await bot.run(["grants", "approve", id])).code).toBe(ExitCode.NOPERM);
    // Neither the bot's owner nor one of its approvers: the IdP's rule refuses (the fake applies it).
    expect((await carol.run(["grants", "approve", id])).code).toBe(ExitCode.NOPERM);
    const ok = await alice.run(["grants", "approve", id]);
    expect(ok.stdout).toContain(`approved grant ${id} of bot@example.test`);
    // This fake is an older IdP (no apes_approval_proofs_supported): no proof, and the user is told.
    expect(ok.stderr).toContain("verifies no approval proofs; approving with the session token alone");
    const waited = await bot.run(["grants", "wait", id], { clock: new StepClock() });
    expect(waited.code).toBe(0);
    expect(waited.stdout.trim()).toBe("approved");
    const token = await bot.run(["grants", "token", id]);
    expect(token.code).toBe(0);
    expect(token.stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
  });

  it("wait exits 77 on a denial and 75 on timeout", async () => {
    const w = world();
    const bot = w.actor("bot@example.test", "agent", "openssh", "alice@example.test");
    const alice = w.actor("alice@example.test", "human");
    await loggedIn(bot);
    await loggedIn(alice);
    const id = (await bot.run(["grants", "request", "--", "rm", "-rf", "/tmp/x"])).stdout.trim();
    const t = await bot.run(["grants", "wait", id, "--timeout", "9s"], { clock: new StepClock() });
    expect(t.code).toBe(ExitCode.TEMPFAIL);
    expect(t.stderr).toContain("still pending");
    await alice.run(["grants", "deny", id]);
    const d = await bot.run(["grants", "wait", id], { clock: new StepClock() });
    expect(d.code).toBe(ExitCode.NOPERM);
    expect(d.stderr).toContain(`grant ${id} is denied by alice@example.test`);
  });

  it("inbox keeps pending grants of others only", () => {
    const g = (id: string, requester: string, status: Grant["status"]): Grant => ({
      id,
      type: "command",
      status,
      created_at: 1,
      request: { requester, target_host: "h", audience: "escapes", grant_type: "once" },
    });
    const all = [
      g("1", "me@x.test", "pending"),
      g("2", "bot@x.test", "pending"),
      g("3", "bot@x.test", "approved"),
    ];
    expect(inboxOf(all, "ME@x.test").map((x) => x.id)).toEqual(["2"]);
  });
});

describe("delegations and token exchange", () => {
  async function setup(w: ReturnType<typeof world>) {
    const bot = w.actor("bot@example.test", "agent");
    const alice = w.actor("alice@example.test", "human");
    await loggedIn(bot);
    await loggedIn(alice);
    const d = await alice.run([
      "--json",
      "delegate",
      "--to",
      bot.email,
      "--audience",
      "sp.example",
      "--scopes",
      "read,send",
    ]);
    expect(d.code, d.stderr).toBe(0);
    return { bot, alice, id: JSON.parse(d.stdout).id as string, idp: w.idp };
  }

  it("delegate sends delegate/audience/scopes; exchange uses RFC 8693 with my token as actor", async () => {
    const w = world();
    const { bot, id, idp } = await setup(w);
    expect(idp.grants.get(id)!.request).toMatchObject({
      delegate: bot.email,
      audience: "sp.example",
      scopes: ["read", "send"],
    });
    const r = await bot.run(["token", "exchange", "--delegation", id, "--audience", "sp.example"]);
    expect(r.code, r.stderr).toBe(0);
    const claims = JSON.parse(Buffer.from(r.stdout.trim().split(".")[1]!, "base64url").toString());
    expect(claims).toMatchObject({ sub: "alice@example.test", act: { sub: "bot@example.test" } });
    const sent = idp.requests.find((q) => q.path === "/token")!.body as Record<string, string>;
    expect(sent.grant_type).toBe("urn:ietf:params:oauth:grant-type:token-exchange");
    expect(sent.delegation_grant_id).toBe(id);
    expect(sent.actor_token?.split(".")).toHaveLength(3);
  });

  it("falls back to client_credentials with a client assertion on unsupported_grant_type", async () => {
    const w = world({ noTokenExchange: true });
    const { bot, id } = await setup(w);
    const r = await bot.run(["--json", "token", "exchange", "--delegation", id, "--audience", "sp.example"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).method).toBe("client-credentials");
  });

  it("lists delegations once each and revokes", async () => {
    const w = world();
    const { alice, id } = await setup(w);
    const l = await alice.run(["--json", "delegations", "list"]);
    expect(JSON.parse(l.stdout).map((g: Grant) => g.id)).toEqual([id]);
    expect((await alice.run(["delegations", "revoke", id])).stdout).toContain(`revoked delegation ${id}`);
  });
});

describe("apes agents", () => {
  it("validates the public key locally and posts {name, public_key}", async () => {
    const w = world();
    const alice = w.actor("alice@example.test", "human");
    await loggedIn(alice);
    const bad = await alice.run(["agents", "add", "--name", "bot", "--key", alice.keyPath]);
    expect(bad.code).toBe(ExitCode.USAGE);
    expect(bad.stderr).toContain("PRIVATE key");
    const ok = await alice.run(["--json", "agents", "add", "--name", "bot", "--key", `${alice.keyPath}.pub`]);
    expect(ok.code, ok.stderr).toBe(0);
    const sent = w.idp.requests.find((q) => q.path === "/api/agents" && q.method === "POST")!.body as Record<
      string,
      string
    >;
    expect(Object.keys(sent).sort()).toEqual(["name", "public_key"]);
    const list = await alice.run(["--json", "agents", "list"]);
    expect(JSON.parse(list.stdout)[0].email).toBe("bot@agents.example.test");
  });
});

describe("apes grants approve: the approval proof", () => {
  async function pendingOfBot(w: ReturnType<typeof world>, argv = ["systemctl", "restart", "nginx"]) {
    const bot = w.actor("bot@example.test", "agent", "openssh", "alice@example.test");
    const alice = w.actor("alice@example.test", "human");
    await loggedIn(bot);
    await loggedIn(alice);
    const id = (await bot.run(["grants", "request", "--", ...argv])).stdout.trim();
    return { alice, bot, id };
  }
  const approves = (w: ReturnType<typeof world>) =>
    w.idp.requests.filter((q) => q.method === "POST" && q.path.endsWith("/approve"));

  it("signs the grant it fetched; the IdP's own check (idp/approval.ts) accepts it, also as timed", async () => {
    const w = world({ approvalProofs: true });
    const { alice, bot, id } = await pendingOfBot(w);
    const r = await alice.run(["grants", "approve", id]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain("warning");
    expect(w.idp.grants.get(id)!.approval_proof).toBe("ed25519");
    const sent = approves(w)[0]!.body as { proof: Record<string, string> };
    expect(Object.keys(sent.proof).sort()).toEqual(["key_fingerprint", "signature", "type"]);
    const id2 = (await bot.run(["grants", "request", "--", "true"])).stdout.trim();
    const timed = await alice.run(["grants", "approve", id2, "--approval", "timed", "--duration", "30m"]);
    expect(timed.code, timed.stderr).toBe(0);
    expect(approves(w)[1]!.body).toMatchObject({ grant_type: "timed", duration: 1800 });
    expect(w.idp.grants.get(id2)!.approval_proof).toBe("ed25519");
  });

  it("a grant changed at the IdP after it was shown is not approved (the proof covers what was shown)", async () => {
    const w = world({ approvalProofs: true });
    const { alice, id } = await pendingOfBot(w);
    w.idp.onRead = (g) => {
      if (g.id === id) g.request.command = ["rm", "-rf", "/"];
    };
    const r = await alice.run(["grants", "approve", id]);
    expect(r.code).toBe(ExitCode.NOPERM);
    expect(r.stderr).toContain("not your registered key's over this grant");
    expect(w.idp.grants.get(id)!.status).toBe("pending");
  });

  it("a session without a key cannot sign: exit 77, the browser named, nothing sent", async () => {
    const w = world({ approvalProofs: true });
    const { alice, id } = await pendingOfBot(w);
    const file = join(alice.home, ".config/apes/auth.json");
    const session = JSON.parse(readFileSync(file, "utf8"));
    delete session.key_path;
    delete session.key_fingerprint;
    writeFileSync(file, JSON.stringify(session), { mode: 0o600 });
    const r = await alice.run(["grants", "approve", id]);
    expect(r.code).toBe(ExitCode.NOPERM);
    expect(r.stderr).toContain("logged in without a key");
    expect(r.stderr).toContain(`approve it in the browser at ${w.idp.base}`);
    expect(approves(w)).toEqual([]);
  });

  it("a timed approval without any duration is a usage error before anything is signed or sent", async () => {
    const w = world({ approvalProofs: true });
    const { alice, id } = await pendingOfBot(w);
    const r = await alice.run(["grants", "approve", id, "--approval", "timed"]);
    expect(r.code).toBe(ExitCode.USAGE);
    expect(approves(w)).toEqual([]);
  });
});
