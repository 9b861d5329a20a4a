import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  addUser,
  api,
  type IdpHandle,
  loginSignature,
  loginWithKey,
  loopbackCert,
  ls,
  newKey,
  runApes,
  startIdp,
  startWorld,
  testStore,
  USERS,
  type World,
} from "../helpers/idp.ts";

const kidOf = (jwt: string) =>
  JSON.parse(Buffer.from(jwt.split(".")[0]!, "base64url").toString()).kid as string;
const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));

describe("idp admin: key rotation, users, files", () => {
  let w: World;
  beforeAll(async () => {
    w = await startWorld();
  });
  afterAll(async () => {
    await w?.idp.stop();
  });

  // SQLite's files (with PostgreSQL there are none; its key file is checked in postgres-store.test.ts).
  it.skipIf(testStore() === "postgres")("keeps the data dir 0700 and the database 0600", () => {
    expect(statSync(w.idp.dataDir).mode & 0o777).toBe(0o700);
    // The WAL holds page images too (the signing key among them): every file is private.
    const files = readdirSync(w.idp.dataDir);
    expect(files).toEqual(expect.arrayContaining(["idp.sqlite", "idp.sqlite-wal", "idp.sqlite-shm"]));
    for (const f of files) expect(statSync(join(w.idp.dataDir, f)).mode & 0o777, f).toBe(0o600);
  });

  it("rotates keys while running: old tokens still verify, new tokens carry the new kid", async () => {
    const oldToken = w.tokens.bot;
    const oldKid = kidOf(oldToken);
    const g = (await w.as("bot").post(w.grants, { ...ls(["rotate"]), grant_type: "once" })).body;
    await w.approve("alice", g.id);
    const oldAuthz = (await w.as("bot").post(`${w.grants}/${g.id}/token`)).body.authz_jwt;

    const r = await runApes(["--json", "idp", "keys", "rotate", "--data", w.idp.dataDir]);
    expect(r.code, r.stderr).toBe(0);
    const newKid = JSON.parse(r.stdout).kid;
    expect(newKid).not.toBe(oldKid);

    const fresh = await loginWithKey(w.idp.url, USERS.bot, w.keys.bot.privateKey);
    expect(kidOf(fresh)).toBe(newKid);
    const jwks = (await api(w.idp.url).get("/.well-known/jwks.json")).body.keys.map(
      (k: { kid: string }) => k.kid,
    );
    expect(jwks).toEqual(expect.arrayContaining([oldKid, newKid]));
    // Old session token and old AuthZ-JWT still work.
    expect((await api(w.idp.url, oldToken).get(w.grants)).status).toBe(200);
    expect((await api(w.idp.url, oldAuthz).post(`${w.grants}/${g.id}/consume`)).body.status).toBe("consumed");
    expect((await api(w.idp.url, fresh).get(w.grants)).status).toBe(200);
    const g2 = (await w.as("bot").post(w.grants, { ...ls(["rotate2"]), grant_type: "once" })).body;
    await w.approve("alice", g2.id);
    expect(kidOf((await api(w.idp.url, fresh).post(`${w.grants}/${g2.id}/token`)).body.authz_jwt)).toBe(
      newKid,
    );
  });

  it("a disabled user can neither log in nor use its token", async () => {
    const token = await loginWithKey(w.idp.url, USERS.dave, w.keys.dave.privateKey);
    const r = await runApes(["idp", "users", "disable", USERS.dave, "--data", w.idp.dataDir]);
    expect(r.code, r.stderr).toBe(0);
    await expect(loginWithKey(w.idp.url, USERS.dave, w.keys.dave.privateKey)).rejects.toThrow(/401/);
    expect((await api(w.idp.url, token).get(w.grants)).status).toBe(401);
    const list = JSON.parse(
      (await runApes(["--json", "idp", "users", "list", "--data", w.idp.dataDir])).stdout,
    );
    expect(list.find((u: { email: string }) => u.email === USERS.dave).disabled).toBe(true);
    expect(
      (await runApes(["idp", "users", "disable", "ghost@example.com", "--data", w.idp.dataDir])).code,
    ).toBe(1);
  });

  it("a human enrolls an agent it owns; agents cannot enroll agents", async () => {
    const k = newKey("helper");
    const agents = w.discovery.openape_agents_endpoint!;
    const r = await w.as("alice").post(agents, { name: "helper", public_key: k.publicLine });
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    expect(r.body).toMatchObject({ email: "helper+agent@example.com", kind: "agent", owner: USERS.alice });
    const token = await loginWithKey(w.idp.url, "helper+agent@example.com", k.privateKey);
    const g = (await api(w.idp.url, token).post(w.grants, { ...ls(["x"]), grant_type: "once" })).body;
    expect((await w.approve("alice", g.id)).status).toBe(200);
    expect((await w.as("alice").post(agents, { name: "helper", public_key: k.publicLine })).status).toBe(409);
    expect((await w.as("bot").post(agents, { name: "sub", public_key: k.publicLine })).status).toBe(403);
    expect((await w.as("alice").post(agents, { name: "Bad Name", public_key: k.publicLine })).status).toBe(
      400,
    );
    expect((await w.as("alice").post(agents, { name: "ok", public_key: "ssh-rsa AAAA" })).status).toBe(400);
    const mine = await w.as("alice").get(agents);
    expect(mine.body.data.map((u: { email: string }) => u.email)).toEqual(
      expect.arrayContaining([USERS.bot, "helper+agent@example.com"]),
    );
  });

  it("challenges are single use, bound to the id, and accept the older agent_id form", async () => {
    const d = w.discovery;
    const post = (u: string, b: unknown) => api(w.idp.url).post(u, b);
    const { challenge } = (await post(d.ddisa_agent_challenge_endpoint!, { agent_id: USERS.bot })).body;
    const signature = loginSignature(d, USERS.bot, challenge, w.keys.bot.privateKey);
    // Bound to the id: the challenge cannot be redeemed for another identity (and stays usable).
    expect(
      (await post(d.ddisa_auth_authenticate_endpoint!, { id: USERS.alice, challenge, signature })).status,
    ).toBe(401);
    const ok = await post(d.ddisa_agent_authenticate_endpoint!, {
      agent_id: USERS.bot,
      challenge,
      signature,
    });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ id: USERS.bot, email: USERS.bot, act: "agent", expires_in: 3600 });
    // Single use.
    expect(
      (await post(d.ddisa_auth_authenticate_endpoint!, { id: USERS.bot, challenge, signature })).status,
    ).toBe(401);
    // A wrong signature fails without spending the challenge (whoever saw it cannot burn it): the
    // raw form (off by default), a message naming another IdP, another key; then the right one works.
    const c2 = (await post(d.ddisa_auth_challenge_endpoint!, { id: USERS.bot })).body.challenge;
    const { sign } = await import("node:crypto");
    const wrongs = [
      sign(null, Buffer.from(c2), w.keys.bot.privateKey).toString("base64"),
      loginSignature({ ...d, issuer: "https://other.example" }, USERS.bot, c2, w.keys.bot.privateKey),
      loginSignature(d, USERS.bot, c2, w.keys.alice.privateKey),
    ];
    for (const wrong of wrongs) {
      expect(
        (await post(d.ddisa_auth_authenticate_endpoint!, { id: USERS.bot, challenge: c2, signature: wrong }))
          .status,
      ).toBe(401);
    }
    const right = loginSignature(d, USERS.bot, c2, w.keys.bot.privateKey);
    expect(
      (await post(d.ddisa_auth_authenticate_endpoint!, { id: USERS.bot, challenge: c2, signature: right }))
        .status,
    ).toBe(200);
    // A challenge the IdP did not seal (or sealed for another id) is refused.
    const forged = `${c2.slice(0, -4)}AAAA`;
    const forgedSig = loginSignature(d, USERS.bot, forged, w.keys.bot.privateKey);
    expect(
      (
        await post(d.ddisa_auth_authenticate_endpoint!, {
          id: USERS.bot,
          challenge: forged,
          signature: forgedSig,
        })
      ).status,
    ).toBe(401);
    expect((await post(d.ddisa_auth_challenge_endpoint!, {})).status).toBe(400);
    expect(
      (await post(d.ddisa_auth_authenticate_endpoint!, { id: USERS.bot, challenge: "x", signature: "short" }))
        .status,
    ).toBe(400);
  });

  it("users add validates its input", async () => {
    const dir = join(tmp("apes-idp-users-"), "d");
    const k = newKey();
    const keyFile = join(dir, "..", "k.pub");
    writeFileSync(keyFile, `${k.publicLine}\n`);
    await addUser(dir, "h@example.com", { publicKey: keyFile });
    const bad = async (args: string[]) =>
      (await runApes(["idp", "users", "add", ...args, "--data", dir])).code;
    expect(await bad(["x@example.com", "--agent"])).toBe(2); // no owner
    expect(await bad(["x@example.com", "--agent", "--owner", "nobody@example.com"])).toBe(1);
    expect(await bad(["x@example.com", "--human", "--agent"])).toBe(2);
    expect(await bad(["not-an-email", "--human"])).toBe(2);
    expect(await bad(["x@example.com", "--human", "--key", "ssh-rsa AAAAB3"])).toBe(2);
    expect(await bad(["h@example.com", "--human"])).toBe(1); // exists
    expect(await bad(["a@example.com", "--agent", "--owner", "h@example.com", "--admin"])).toBe(2);
    expect(await bad(["a@example.com", "--agent", "--owner", "h@example.com"])).toBe(0);
    expect(await bad(["b@example.com", "--agent", "--owner", "a@example.com"])).toBe(1); // owner must be human
  });
});

describe("idp serve options", () => {
  let idp: IdpHandle | undefined;
  afterAll(async () => {
    await idp?.stop();
  });

  it("rate limits per identity with 429 and Retry-After", async () => {
    const dir = join(tmp("apes-idp-rl-"), "d");
    const k = newKey();
    await addUser(dir, "r@example.com", { publicKey: k.publicLine });
    idp = await startIdp({ dataDir: dir, extraArgs: ["--rate-limit", "8/1m"] });
    const token = await loginWithKey(idp.url, "r@example.com", k.privateKey);
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 12; i++) {
      const r = await api(idp.url, token).get("/api/me");
      statuses.push(r.status);
      if (r.status === 429) retryAfter = r.headers.get("retry-after");
    }
    expect(statuses.slice(0, 8).every((s) => s === 200)).toBe(true);
    expect(statuses.slice(8)).toEqual([429, 429, 429, 429]);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
    await idp.stop();
    idp = undefined;
  });

  it("serves HTTPS with --tls-cert/--tls-key and derives an https issuer", async () => {
    const dir = tmp("apes-idp-tls-");
    const tlsFiles = loopbackCert(dir);
    idp = await startIdp({
      dataDir: join(dir, "d"),
      tls: tlsFiles,
    });
    expect(idp.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(idp.issuer).toBe(idp.url);
    const dispatcher = new Agent({ connect: { ca: readFileSync(tlsFiles.cert) } });
    const r = await undiciFetch(`${idp.url}/.well-known/openid-configuration`, { dispatcher });
    expect(((await r.json()) as { issuer: string }).issuer).toBe(idp.url);
    await dispatcher.close();
    await idp.stop();
    idp = undefined;
  });

  it("refuses an expired session token (--token-ttl 3s)", async () => {
    const dir = join(tmp("apes-idp-ttl-"), "d");
    const k = newKey();
    await addUser(dir, "t@example.com", { publicKey: k.publicLine });
    // 3 s, not 1 s: login plus the first request must fit inside the lifetime on a loaded machine.
    idp = await startIdp({ dataDir: dir, tokenTtl: "3s" });
    const token = await loginWithKey(idp.url, "t@example.com", k.privateKey);
    expect((await api(idp.url, token).get("/api/me")).status).toBe(200);
    let r = await api(idp.url, token).get("/api/me");
    for (let i = 0; i < 60 && r.status === 200; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await api(idp.url, token).get("/api/me");
    }
    expect(r.status).toBe(401);
    expect(r.body).toMatchObject({ type: "https://openape.org/errors/invalid_token", reason: "expired" });
    await idp.stop();
    idp = undefined;
  });

  it("explains a port in use and unreadable TLS files", async () => {
    const dir = join(tmp("apes-idp-port-"), "d");
    idp = await startIdp({ dataDir: dir });
    const port = new URL(idp.url).port;
    const busy = await runApes(["idp", "serve", "--listen", `127.0.0.1:${port}`, "--data", `${dir}2`]);
    expect(busy.code).toBe(69);
    expect(busy.stderr).toMatch(/already in use/);
    const tls = await runApes([
      "idp",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--data",
      `${dir}3`,
      "--tls-cert",
      "/nonexistent.pem",
      "--tls-key",
      "/nonexistent.key",
    ]);
    expect(tls.code).toBe(78);
    await idp.stop();
    idp = undefined;
  });

  it("refuses bad options with a usage error", async () => {
    expect((await runApes(["idp", "serve", "--listen", "nope"])).code).toBe(2);
    expect((await runApes(["idp", "serve", "--listen", "127.0.0.1:0", "--token-ttl", "forever"])).code).toBe(
      2,
    );
    expect((await runApes(["idp", "serve", "--listen", "127.0.0.1:0", "--tls-cert", "x"])).code).toBe(2);
    expect((await runApes(["idp", "serve", "--listen", "127.0.0.1:0", "--rate-limit", "lots"])).code).toBe(2);
    for (const bad of [
      ["--login-rate-limit", "lots"],
      ["--token-rate-limit", "1/"],
      ["--connection-rate", "x/1s"],
      ["--max-connections", "0"],
      ["--max-connections-per-client", "-1"],
    ]) {
      expect((await runApes(["idp", "serve", "--listen", "127.0.0.1:0", ...bad])).code, bad.join(" ")).toBe(
        2,
      );
    }
  });
});
