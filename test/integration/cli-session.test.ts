import { mkdirSync, mkdtempSync, renameSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addUser, type IdpHandle, loopbackCert, startIdp } from "../helpers/idp.ts";
import { type CliUser, cliUser, jwtClaims, loginCount, runWith } from "./cli-helpers.ts";

// The real IdP with 10 s tokens: the CLI renews in the last 5 s (half the lifetime for short tokens).
let idp: IdpHandle;
let alice: CliUser;
let bot: CliUser;
let pk: CliUser;

beforeAll(async () => {
  idp = await startIdp({ tokenTtl: "10s" });
  alice = cliUser("alice@example.com", idp.url);
  bot = cliUser("bot@example.com", idp.url);
  pk = cliUser("carol@example.com", idp.url, "pkcs8");
  await addUser(idp.dataDir, alice.email, { publicKey: alice.publicLine });
  await addUser(idp.dataDir, pk.email, { publicKey: pk.publicLine });
  await addUser(idp.dataDir, bot.email, { agent: true, owner: alice.email, publicKey: bot.publicLine });
  // users added offline are picked up by the running IdP (same sqlite file)
});

afterAll(async () => {
  await idp?.stop();
});

/** Waits (bounded) until the stored token needs renewal, without asserting any duration. */
async function untilStale(u: CliUser): Promise<void> {
  const s = u.authJson() as { expires_at: number; issued_at: number };
  const margin = Math.floor((s.expires_at - s.issued_at) / 2);
  for (let i = 0; i < 200 && Date.now() / 1000 < s.expires_at - margin + 1; i++) await sleep(100);
}

describe("apes login (real IdP)", () => {
  it("logs in with an OpenSSH key; auth.json is 0600 in a 0700 dir and records key path + fingerprint", async () => {
    const r = await alice.run(["login", alice.email]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`logged in as ${alice.email} (human)`);
    const file = join(alice.home, ".config/apes/auth.json");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(alice.home, ".config/apes")).mode & 0o777).toBe(0o700);
    const s = alice.authJson();
    expect(s).toMatchObject({ email: alice.email, act: "human", idp: idp.url, key_path: alice.keyPath });
    expect(s.key_fingerprint).toMatch(/^SHA256:/);
    const claims = jwtClaims(String(s.token));
    expect(claims).toMatchObject({ sub: alice.email, aud: "apes-cli", act: "human", iss: idp.issuer });
  });

  it("logs in with a PKCS#8 key, email taken from the .pub comment", async () => {
    const r = await pk.run(["login", "--key", pk.keyPath]);
    expect(r.code, r.stderr).toBe(0);
    expect(pk.authJson().email).toBe(pk.email);
  });

  it("an agent logs in and whoami --json shows identity, act, IdP, expiry and fingerprint", async () => {
    expect((await bot.run(["login", bot.email, "--idp", idp.url])).code).toBe(0);
    const who = await bot.run(["--json", "whoami"]);
    expect(who.code, who.stderr).toBe(0);
    const j = JSON.parse(who.stdout);
    expect(j).toMatchObject({ email: bot.email, act: "agent", idp: idp.url, key_path: bot.keyPath });
    expect(j.key_fingerprint).toBe(bot.authJson().key_fingerprint);
    expect(typeof j.expires_at).toBe("number");
  });

  it("a key the IdP does not know is refused with 77", async () => {
    const stranger = cliUser("nobody@example.com", idp.url);
    const r = await stranger.run(["login", stranger.email]);
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("login as nobody@example.com failed");
  });

  it("renews an expiring token transparently with the key", async () => {
    await bot.run(["login", bot.email]);
    const before = bot.authJson();
    await untilStale(bot);
    const r = await bot.run(["grants", "list"]);
    expect(r.code, r.stderr).toBe(0);
    const after = bot.authJson();
    expect(after.token).not.toBe(before.token);
    expect(jwtClaims(String(after.token)).jti).not.toBe(jwtClaims(String(before.token)).jti);
    expect(Number(after.expires_at)).toBeGreaterThan(Number(before.expires_at));
  });

  it("ten concurrent commands at expiry authenticate once and leave a valid auth.json", async () => {
    await alice.run(["login", alice.email]);
    await untilStale(alice);
    const loginsBefore = loginCount(idp.logs(), alice.email);
    const runs = await Promise.all(Array.from({ length: 10 }, () => alice.run(["--json", "grants", "list"])));
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    // Give the IdP's log a moment to flush the last line.
    await sleep(200);
    expect(loginCount(idp.logs(), alice.email) - loginsBefore).toBe(1);
    const s = alice.authJson();
    expect(jwtClaims(String(s.token)).sub).toBe(alice.email);
    const who = await alice.run(["--json", "whoami"]);
    expect(who.code, who.stderr).toBe(0);
  });

  it("a moved key gives the documented error with the exact command that fixes it", async () => {
    const mover = cliUser("dave@example.com", idp.url);
    await addUser(idp.dataDir, mover.email, { publicKey: mover.publicLine });
    expect((await mover.run(["login", mover.email])).code).toBe(0);
    // The service user's key moved to the apes default location.
    mkdirSync(join(mover.home, ".config/apes"), { recursive: true });
    const newPath = join(mover.home, ".config/apes/id_ed25519");
    renameSync(mover.keyPath, newPath);
    await untilStale(mover);
    const r = await mover.run(["grants", "list"]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`the private key ${mover.keyPath} does not exist`);
    expect(r.stderr).toContain(`apes login ${mover.email} --key ${newPath}`);
    const fix = await mover.run(["login", mover.email, "--key", newPath]);
    expect(fix.code, fix.stderr).toBe(0);
    expect((await mover.run(["grants", "list"])).code).toBe(0);
  });

  it("logout forgets the session; the next command says how to log in (77)", async () => {
    const u = cliUser("erin@example.com", idp.url);
    await addUser(idp.dataDir, u.email, { publicKey: u.publicLine });
    expect((await u.run(["login", u.email])).code).toBe(0);
    expect((await u.run(["logout"])).code).toBe(0);
    const r = await u.run(["grants", "list"]);
    expect(r.code).toBe(77);
    expect(r.stderr).toContain("not logged in");
    expect(r.stderr).toContain("apes login");
  });
});

describe("an IdP that is down", () => {
  it("gives exit 69 and names the IdP", async () => {
    const down = await startIdp();
    const url = down.url;
    await down.stop();
    const u = cliUser("frank@example.com", url);
    const r = await u.run(["login", u.email]);
    expect(r.code).toBe(69);
    expect(r.stderr).toContain(`IdP at ${url} is unreachable (connection refused)`);
    const r2 = await runWith(["login", u.email, "--idp", url], u.env);
    expect(r2.code).toBe(69);
  });

  it("a logged-in command whose IdP went away gives 69, not a silent failure", async () => {
    const gone = await startIdp();
    const u = cliUser("ivy@example.com", gone.url);
    await addUser(gone.dataDir, u.email, { publicKey: u.publicLine });
    expect((await u.run(["login", u.email])).code).toBe(0);
    await gone.stop();
    const r = await u.run(["grants", "list"]);
    expect(r.code).toBe(69);
    expect(r.stderr).toContain(`IdP at ${gone.url} is unreachable`);
    expect(r.stdout).toBe("");
  });
});

describe("an IdP on HTTPS with a private CA", () => {
  it("is trusted through APES_CA_FILE and refused without it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "apes-cli-tls-"));
    const tlsFiles = loopbackCert(dir);
    const tls = await startIdp({ tls: tlsFiles });
    try {
      const u = cliUser("gina@example.com", tls.url);
      await addUser(tls.dataDir, u.email, { publicKey: u.publicLine });
      const refused = await u.run(["login", u.email]);
      expect(refused.code).toBe(69);
      expect(refused.stderr).toContain("APES_CA_FILE");
      const ok = await u.run(["login", u.email], { APES_CA_FILE: tlsFiles.cert });
      expect(ok.code, ok.stderr).toBe(0);
      expect((await u.run(["grants", "list"], { APES_CA_FILE: tlsFiles.cert })).code).toBe(0);
    } finally {
      await tls.stop();
    }
  });
});

describe("apes login through DDISA discovery", () => {
  it("finds the IdP from the email's _ddisa record (DoH fallback) and --debug shows record and mode", async () => {
    const { createServer } = await import("node:http");
    const { createSocket } = await import("node:dgram");
    // A DNS server address where nobody listens, so the resolver falls back to DoH.
    const udp = createSocket("udp4");
    await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
    const deadDns = `127.0.0.1:${udp.address().port}`;
    await new Promise<void>((r) => udp.close(() => r()));
    const queries: string[] = [];
    const doh = createServer((req, res) => {
      const name = new URL(req.url ?? "/", "http://x").searchParams.get("name") ?? "";
      queries.push(name);
      const answer =
        name === "_ddisa.example.com"
          ? [{ name, type: 16, TTL: 60, data: `"v=ddisa1 idp=${idp.url}; mode=allowlist-admin"` }]
          : [];
      res.writeHead(200, { "content-type": "application/dns-json" });
      res.end(JSON.stringify({ Status: answer.length ? 0 : 3, Answer: answer }));
    });
    await new Promise<void>((r) => doh.listen(0, "127.0.0.1", r));
    try {
      const u = cliUser("henry@example.com", idp.url);
      await addUser(idp.dataDir, u.email, { publicKey: u.publicLine });
      const { APES_IDP: _none, ...env } = u.env;
      const r = await runWith(["--debug", "login", u.email], {
        ...env,
        APES_DNS_SERVERS: deadDns,
        APES_DOH_URL: `http://127.0.0.1:${(doh.address() as { port: number }).port}/resolve`,
        APES_ALLOW_LOOPBACK_HTTP: "1",
      });
      expect(r.code, r.stderr).toBe(0);
      expect(queries).toContain("_ddisa.example.com");
      expect(r.stderr).toContain("mode=allowlist-admin");
      expect(r.stderr).toContain("via doh");
      expect(r.stderr).not.toMatch(/eyJ[\w-]+\.eyJ/); // no token in debug output
      expect(u.authJson().idp).toBe(idp.url);
    } finally {
      await new Promise((r) => doh.close(r));
    }
  });
});
