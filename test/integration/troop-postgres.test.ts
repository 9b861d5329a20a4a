import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { api, runApes, startWorld, USERS, type World } from "../helpers/idp.ts";
import { PASSWORD_ROLE, type PgServer, sharedPostgres } from "../helpers/postgres.ts";
import { connectNest, type NestClient, startTroop, type TroopHandle, troopToken } from "../helpers/troop.ts";

/**
 * Two `apes troop serve` processes on one PostgreSQL database, as behind a load balancer: an intent
 * submitted on B reaches the nest whose socket A holds (LISTEN/NOTIFY), and still does while the
 * notification connections are down (the fallback re-read). The database role logs in with a
 * password from a file (never argv).
 */

const stopBody = (id: string, nest: string) => ({ id, nest, kind: "stop", agent: "worker" });

describe("two troop instances on one PostgreSQL database", () => {
  let w: World;
  let server: PgServer;
  let url: string;
  let passwordFile: string;
  let a: TroopHandle;
  let b: TroopHandle;
  let bot: NestClient;
  const t: Record<string, string> = {};

  beforeAll(async () => {
    w = await startWorld();
    server = await sharedPostgres();
    url = await server.createDatabase("troop", PASSWORD_ROLE.user);
    passwordFile = join(mkdtempSync(join(tmpdir(), "apes-troop-pw-")), "pw");
    writeFileSync(passwordFile, `${PASSWORD_ROLE.password}\n`, { mode: 0o600 });
    const db = ["--database", url, "--database-password-file", passwordFile];
    // Started together on an empty database: one of them migrates it, both serve.
    [a, b] = await Promise.all([
      startTroop(w.idp.issuer, { extraArgs: db }),
      startTroop(w.idp.issuer, { extraArgs: db }),
    ]);
    for (const n of ["alice", "bot"] as const) t[n] = await troopToken(w.idp.url, w.tokens[n]);
    const r = await connectNest(a.wsUrl, t.bot!);
    if (!r.ok) throw new Error(`nest socket refused: ${r.status} ${r.body}`);
    bot = r.nest;
    expect((await bot.next("hello")).nest).toBe(USERS.bot);
  });
  afterAll(async () => {
    bot?.close();
    await Promise.all([a?.stop(), b?.stop()]);
    await w?.idp.stop();
  });

  it("an intent submitted on B reaches the nest on A's socket at once; its state is one for both", async () => {
    const created = await api(b.url, t.alice).post("/v1/intents", stopBody("across-1", USERS.bot));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    // Nothing else would send it: A polls nothing while its notifications work, and the nest's
    // socket stays open (a reconnect would deliver it). Without the push this waits out its 10 s.
    const frame = await bot.next("intent", 10_000);
    expect(frame.intent).toMatchObject({ id: "across-1", seq: 1, submitted_by: USERS.alice });
    bot.send({ type: "ack", intent_id: "across-1" });
    const seen = async () => (await api(b.url, t.alice).get("/v1/intents/across-1")).body.state;
    for (let i = 0; i < 50 && (await seen()) !== "acked"; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await seen()).toBe("acked");
    // Per-nest order holds across instances: the next one (submitted on A) is seq 2.
    const next = await api(a.url, t.alice).post("/v1/intents", stopBody("across-2", USERS.bot));
    expect(next.body).toMatchObject({ seq: 2, nest_connected: true });
    expect((await bot.next("intent")).intent.id).toBe("across-2");
  });

  it("with the notification connections cut, an intent submitted on B still arrives (re-read, then reconnect)", async () => {
    const admin = new pg.Client({ connectionString: server.adminUrl });
    await admin.connect();
    try {
      const cut = await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'apes-troop-listen'",
      );
      expect(cut.rowCount).toBe(2);
    } finally {
      await admin.end();
    }
    const created = await api(b.url, t.alice).post("/v1/intents", stopBody("across-gap", USERS.bot));
    expect(created.status).toBe(201);
    expect((await bot.next("intent", 10_000)).intent.id).toBe("across-gap");
    // Each instance said so in its log (a warning, no password).
    for (const i of [a, b]) {
      for (let n = 0; n < 50 && !i.logs().includes("database notifications lost"); n++)
        await new Promise((r) => setTimeout(r, 100));
      expect(i.logs()).toContain("database notifications lost");
      expect(i.logs()).not.toContain(PASSWORD_ROLE.password);
    }
  });

  it("refuses a password on the command line or in a loose file (78), the file without --database (2)", async () => {
    const base = [
      "troop",
      "serve",
      "--idp",
      w.idp.issuer,
      "--client-id",
      "troop.test",
      "--listen",
      "127.0.0.1:0",
    ];
    const onArgv = await runApes([...base, "--database", url.replace("@", ":x@")]);
    expect(onArgv.code).toBe(78);
    expect(onArgv.stderr).toMatch(/contains a password/);
    const loose = join(mkdtempSync(join(tmpdir(), "apes-troop-pw-")), "pw");
    writeFileSync(loose, "x\n");
    chmodSync(loose, 0o644);
    const open = await runApes([...base, "--database", url, "--database-password-file", loose]);
    expect(open.code).toBe(78);
    const alone = await runApes([...base, "--database-password-file", passwordFile]);
    expect(alone.code).toBe(2);
  });
});
