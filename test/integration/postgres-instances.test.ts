import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { s256 } from "../../idp/oauth/pkce.ts";
import { MIGRATIONS } from "../../idp/store/postgres/migrations.ts";
import {
  type ApiResponse,
  addUser,
  api,
  approvalInputOf,
  discovery,
  type IdpHandle,
  loginSignature,
  ls,
  newKey,
  openTestStore,
  runApes,
  signApproval,
  startIdp,
  storeArgs,
} from "../helpers/idp.ts";
import { PASSWORD_ROLE, sharedPostgres } from "../helpers/postgres.ts";

/**
 * Several `apes idp serve` instances on one PostgreSQL database, as behind a load balancer: one
 * issuer, the same key file, every request free to land on any instance. What holds for one SQLite
 * process must hold across them.
 */

const ISSUER = "https://idp.example.test";
interface ListPage {
  data: { id: string }[];
  pagination?: { cursor: string | null; has_more: boolean };
}
const path = (endpoint: string) => new URL(endpoint).pathname;

describe("two IdP instances on one PostgreSQL database", () => {
  let dataDir: string;
  let a: IdpHandle;
  let b: IdpHandle;
  const alice = newKey("alice");
  const bot = newKey("bot");
  let doc: Record<string, string>;
  let grants: string;
  const tokens: Record<string, Record<string, string>> = {};

  /** Login on `on` (challenge and authenticate may hit different instances). */
  const login = async (email: string, key: ReturnType<typeof newKey>, on: IdpHandle, also = on) => {
    const c = await api(on.url).post(path(doc.ddisa_auth_challenge_endpoint!), { id: email });
    expect(c.status).toBe(200);
    const signature = loginSignature(doc, email, c.body.challenge, key.privateKey);
    const t = await api(also.url).post(path(doc.ddisa_auth_authenticate_endpoint!), {
      id: email,
      challenge: c.body.challenge,
      signature,
    });
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    return t.body.token as string;
  };
  const as = (who: "alice" | "bot", on: IdpHandle) => api(on.url, tokens[who]![on === a ? "a" : "b"]);
  /** alice approves on `on` with a proof signed by her key, as `apes grants approve` does. */
  const approveOn = async (on: IdpHandle, id: string) => {
    const grant = await as("alice", on).get(`${grants}/${id}`);
    const proof = signApproval(
      approvalInputOf(doc.issuer!, grant.body, {}),
      "alice@example.com",
      alice.privateKey,
    );
    return as("alice", on).post(`${grants}/${id}/approve`, { proof });
  };

  beforeAll(async () => {
    dataDir = join(mkdtempSync(join(tmpdir(), "apes-pg-instances-")), "data");
    [a, b] = await Promise.all([
      startIdp({ dataDir, store: "postgres", issuer: ISSUER }),
      startIdp({ dataDir, store: "postgres", issuer: ISSUER }),
    ]);
    await addUser(dataDir, "alice@example.com", { publicKey: alice.publicLine });
    await addUser(dataDir, "bot@example.com", {
      agent: true,
      owner: "alice@example.com",
      publicKey: bot.publicLine,
    });
    doc = await discovery(a.url);
    grants = path(doc.openape_grants_endpoint!);
    // A token from either instance works on both: each side logs in on one and is used on both.
    const aliceToken = await login("alice@example.com", alice, a, b);
    const botToken = await login("bot@example.com", bot, b, a);
    tokens.alice = { a: aliceToken, b: aliceToken };
    tokens.bot = { a: botToken, b: botToken };
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  const approvedOnce = async (argv: string[]) => {
    const g = (await as("bot", a).post(grants, { ...ls(argv), grant_type: "once" })).body;
    expect((await approveOn(b, g.id)).status).toBe(200);
    const t = await as("bot", a).post(`${grants}/${g.id}/token`);
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    return { id: g.id as string, jwt: t.body.authz_jwt as string };
  };

  it("started together on an empty database: the schema was migrated once, and both serve", async () => {
    const url = storeArgs(dataDir)[1]!;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query("SELECT version FROM apes_idp_migrations ORDER BY version");
      expect(rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
    } finally {
      await c.end();
    }
    // Both publish the same keys (both may have created one; the newest signs everywhere).
    const jwksA = (await api(a.url).get(path(doc.jwks_uri!))).body;
    const jwksB = (await api(b.url).get(path(doc.jwks_uri!))).body;
    expect(jwksA.keys.map((k: { kid: string }) => k.kid).sort()).toEqual(
      jwksB.keys.map((k: { kid: string }) => k.kid).sort(),
    );
  });

  it("of 40 concurrent consumes of one once-grant spread over both instances exactly one succeeds", async () => {
    const { id, jwt } = await approvedOnce(["reboot"]);
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => api((i % 2 ? a : b).url, jwt).post(`${grants}/${id}/consume`)),
    );
    expect(results.filter((r) => r.status === 200 && r.body.status === "consumed")).toHaveLength(1);
    expect(results.filter((r) => r.status === 409 && r.body.error === "already_consumed")).toHaveLength(39);
  });

  it("of concurrent decisions on both instances exactly one wins", async () => {
    const g = (await as("bot", a).post(grants, { ...ls(["race"]), grant_type: "once" })).body;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        i % 3 ? approveOn(i % 2 ? a : b, g.id) : as("alice", i % 2 ? a : b).post(`${grants}/${g.id}/deny`),
      ),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(results.filter((r) => r.status === 409)).toHaveLength(19);
  });

  it("of concurrent refreshes of one refresh token on both instances exactly one wins; the replays end its family", async () => {
    const rt = randomBytes(32).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    const store = await openTestStore(dataDir);
    try {
      await store.insertRefreshToken({
        tokenHash: s256(rt),
        familyId: randomUUID(),
        clientId: "apes-cli",
        sub: "bot@example.com",
        act: "agent",
        createdAt: now,
        expiresAt: now + 3600,
      });
    } finally {
      await store.close();
    }
    const body = { grant_type: "refresh_token", refresh_token: rt, client_id: "apes-cli" };
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => api((i % 2 ? a : b).url).post(path(doc.token_endpoint!), body)),
    );
    const won = results.filter((r) => r.status === 200);
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === 400 && r.body.error === "invalid_grant")).toHaveLength(9);
    // The rotated token belongs to the family the replays revoked: it is dead on both instances.
    const next = { ...body, refresh_token: won[0]!.body.refresh_token as string };
    for (const on of [a, b])
      expect((await api(on.url).post(path(doc.token_endpoint!), next)).status).toBe(400);
  });

  it("a login challenge is single use across instances: one of concurrent authentications wins", async () => {
    const email = "alice@example.com";
    const c = await api(a.url).post(path(doc.ddisa_auth_challenge_endpoint!), { id: email });
    const signature = loginSignature(doc, email, c.body.challenge, alice.privateKey);
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        api((i % 2 ? a : b).url).post(path(doc.ddisa_auth_authenticate_endpoint!), {
          id: email,
          challenge: c.body.challenge,
          signature,
        }),
      ),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(results.filter((r) => r.status !== 200).length).toBe(9);
  });

  it("a long poll on A is answered when the grant is approved on B", async () => {
    const created = await as("bot", a).post(grants, { ...ls(["wait-across"]), grant_type: "once" });
    const etag = created.headers.get("etag")!;
    const waiting = as("bot", a).get(`${grants}/${created.body.id}`, {
      prefer: "wait=60",
      "if-none-match": etag,
    });
    await as("bot", a).get(`${grants}/${created.body.id}`); // the waiter is parked by now
    expect((await approveOn(b, created.body.id)).status).toBe(200);
    const r = await waiting;
    expect(r.status).toBe(200);
    expect(r.body.status).toBe("approved");
    // Answered by the push: a wait that ran out (60 s) would overrun this test's deadline (15 s).
  }, 15_000);

  it("while A's notification connection is down, its long polls still see B's decisions, and it reconnects", async () => {
    const admin = new pg.Client({ connectionString: storeArgs(dataDir)[1]! });
    await admin.connect();
    const listeners = async () =>
      (
        await admin.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'apes-idp-listen'",
        )
      ).rows[0].n as number;
    try {
      expect(await listeners()).toBe(2);
      const created = await as("bot", a).post(grants, { ...ls(["wait-dropped"]), grant_type: "once" });
      const waiting = as("bot", a).get(`${grants}/${created.body.id}`, {
        prefer: "wait=60",
        "if-none-match": created.headers.get("etag")!,
      });
      await as("bot", a).get(`${grants}/${created.body.id}`);
      // Cut every notification connection (as a failover or a network cut would).
      await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'apes-idp-listen'",
      );
      expect((await as("alice", b).post(`${grants}/${created.body.id}/deny`)).status).toBe(200);
      const r = await waiting;
      expect(r.status).toBe(200);
      expect(r.body.status).toBe("denied");
      for (let i = 0; i < 100 && (await listeners()) < 2; i++) await new Promise((s) => setTimeout(s, 100));
      expect(await listeners()).toBe(2);
      expect(a.logs()).toContain("database notifications lost");
    } finally {
      await admin.end();
    }
  }, 20_000);

  it("a user disabled through an admin command is refused by both instances at the next request", async () => {
    await addUser(dataDir, "carol@example.com", { publicKey: alice.publicLine });
    const token = await login("carol@example.com", alice, a);
    expect((await api(b.url, token).get(grants)).status).toBe(200);
    const r = await runApes(["idp", "users", "disable", "carol@example.com", "--data", dataDir]);
    expect(r.code, r.stderr).toBe(0);
    for (const on of [a, b]) expect((await api(on.url, token).get(grants)).status).toBe(401);
  });

  it("a key rotated by an admin command: both sign with the new key and accept each other's tokens", async () => {
    const r = await runApes(["--json", "idp", "keys", "rotate", "--data", dataDir]);
    expect(r.code, r.stderr).toBe(0);
    const kid = JSON.parse(r.stdout).kid as string;
    const token = await login("alice@example.com", alice, b);
    expect(JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()).kid).toBe(kid);
    expect((await api(a.url, token).get(grants)).status).toBe(200);
    tokens.alice = { a: token, b: token };
  });

  it("pages stay stable while the other instance creates grants", async () => {
    const mine: string[] = [];
    for (let i = 0; i < 12; i++) {
      mine.push(
        (await as("bot", i % 2 ? a : b).post(grants, { ...ls([`page-${i}`]), grant_type: "once" })).body.id,
      );
    }
    const all = async () => {
      const seen: string[] = [];
      let next: string | undefined = `${grants}?limit=5`;
      for (let page = 0; next && page < 50; page++) {
        const r: ApiResponse<ListPage> = await as("bot", page % 2 ? a : b).get<ListPage>(next);
        expect(r.status).toBe(200);
        seen.push(...r.body.data.map((g: { id: string }) => g.id));
        if (page === 1) await as("bot", b).post(grants, { ...ls(["late"]), grant_type: "once" });
        next = r.body.pagination?.has_more
          ? `${grants}?limit=5&cursor=${r.body.pagination.cursor}`
          : undefined;
      }
      return seen;
    };
    const seen = await all();
    expect(new Set(seen).size).toBe(seen.length);
    // Newest first, and every grant created before the listing started is in it.
    const positions = mine.map((id) => seen.indexOf(id));
    expect(positions.every((p) => p >= 0)).toBe(true);
    expect([...positions].sort((x, y) => y - x)).toEqual(positions);
  });

  it("SIGKILL of an instance loses no acknowledged write: the other has every one", async () => {
    const acknowledged: string[] = [];
    const writes = Array.from({ length: 30 }, async (_, i) => {
      const r = await as("bot", a).post(grants, { ...ls([`kill-${i}`]), grant_type: "once" });
      if (r.status === 201) acknowledged.push(r.body.id);
    });
    await Promise.all(writes);
    await a.kill("SIGKILL");
    expect(acknowledged).toHaveLength(30);
    for (const id of acknowledged) {
      expect((await as("bot", b).get(`${grants}/${id}`)).body.status).toBe("pending");
    }
    await a.restart();
    expect((await as("bot", a).get(`${grants}/${acknowledged[0]}`)).status).toBe(200);
  });
});

describe("postgres database options", () => {
  it("the admin commands log in with --database-password-file or PGPASSWORD, and fail closed without", async () => {
    const pgServer = await sharedPostgres();
    const url = await pgServer.createDatabase("pwcli", PASSWORD_ROLE.user);
    const f = join(mkdtempSync(join(tmpdir(), "apes-pg-pw-")), "pw");
    writeFileSync(f, `${PASSWORD_ROLE.password}\n`, { mode: 0o600 });
    const add = await runApes([
      "idp",
      "users",
      "add",
      "p@example.com",
      "--human",
      "--database",
      url,
      "--database-password-file",
      f,
    ]);
    expect(add.code, add.stderr).toBe(0);
    const list = await runApes(["--json", "idp", "users", "list"], {
      APES_DATABASE_URL: url,
      PGPASSWORD: PASSWORD_ROLE.password,
    });
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).map((u: { email: string }) => u.email)).toEqual(["p@example.com"]);
    const none = await runApes(["idp", "users", "list", "--database", url], { PGPASSWORD: "wrong" });
    expect(none.code).toBe(78);
    expect(none.stderr).not.toContain(PASSWORD_ROLE.password);
    chmodSync(f, 0o644);
    const open = await runApes(["idp", "users", "list", "--database", url, "--database-password-file", f]);
    expect(open.code).toBe(78);
    expect(open.stderr).toMatch(/readable by others/);
  });

  it("refuses a password in the database URL before connecting (78), and names no password", async () => {
    const pgServer = await sharedPostgres();
    const url = `postgres://apes:hunter2@127.0.0.1:${pgServer.port}/postgres`;
    for (const args of [
      ["idp", "serve", "--listen", "127.0.0.1:0", "--database", url],
      ["idp", "users", "list", "--database", url],
    ]) {
      const r = await runApes(args);
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/contains a password/);
      expect(r.stderr).not.toContain("hunter2");
    }
    const env = await runApes(["idp", "users", "list"], { APES_DATABASE_URL: url });
    expect(env.code).toBe(78);
    // The server needs the key file; --data and --database exclude each other.
    const nokey = await runApes([
      "idp",
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--database",
      `postgres://apes@127.0.0.1:${pgServer.port}/postgres`,
    ]);
    expect(nokey.code).toBe(2);
    expect(nokey.stderr).toMatch(/--database-key-file/);
    const both = await runApes([
      "idp",
      "users",
      "list",
      "--data",
      "/nonexistent",
      "--database",
      "postgres://apes@h/db",
    ]);
    expect(both.code).toBe(2);
    const loose = await runApes(["idp", "users", "list", "--database-key-file", "k"]);
    expect(loose.code).toBe(2);
    const param = await runApes([
      "idp",
      "users",
      "list",
      "--database",
      `postgres://apes@127.0.0.1:1/x?password=p`,
    ]);
    expect(param.code).toBe(78);
    expect(param.stderr).toMatch(/password parameter/);
  });
});
