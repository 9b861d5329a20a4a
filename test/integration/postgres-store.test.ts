import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newSigningKeyRecord } from "../../idp/keys.ts";
import { KeyFileError, loadKeyFile } from "../../idp/store/postgres/key-file.ts";
import { MIGRATIONS, migrate } from "../../idp/store/postgres/migrations.ts";
import { openPostgresStore } from "../../idp/store/postgres/store.ts";
import { DatabaseUrlError, postgresTarget, readPasswordFile } from "../../server/postgres.ts";
import { expectListingsOf, upgradeRows } from "../helpers/grants.ts";
import { PASSWORD_ROLE, type PgServer, sharedPostgres } from "../helpers/postgres.ts";

/** The PostgreSQL store's own parts on a real server: migrations, sealed keys, password, notifications. */

let server: PgServer;
const dir = mkdtempSync(join(tmpdir(), "apes-pg-store-"));
beforeAll(async () => {
  server = await sharedPostgres();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const client = async (url: string) => {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
};

describe("postgres migrations", () => {
  it("eight instances migrating an empty database at once: each migration runs exactly once", async () => {
    const url = await server.createDatabase("mig");
    const clients = await Promise.all(Array.from({ length: 8 }, () => client(url)));
    try {
      const applied = await Promise.all(clients.map((c) => migrate(c)));
      expect(applied.flat()).toEqual(MIGRATIONS.map((m) => m.version));
      const { rows } = await clients[0]!.query("SELECT version FROM apes_idp_migrations ORDER BY version");
      expect(rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
      expect((await migrate(clients[1]!)).length).toBe(0);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  it("eight stores opening an empty database at once all open", async () => {
    const url = await server.createDatabase("open");
    const stores = await Promise.all(
      Array.from({ length: 8 }, () => openPostgresStore({ target: postgresTarget(url), maxConnections: 2 })),
    );
    await Promise.all(stores.map((s) => s.close()));
  });

  it("upgrades a database that had grants_by_status and grants_by_type: grants and listings as before", async () => {
    const url = await server.createDatabase("indexes");
    const c = await client(url);
    const rows = upgradeRows();
    let before: unknown[];
    try {
      await migrate(c, MIGRATIONS.slice(0, 4));
      for (const r of rows) {
        await c.query(
          "INSERT INTO grants (id, type, requester, status, grant_type, request, delegator, delegate, created_at) VALUES ($1, $2, $3, $4, 'once', $5, $6, $7, $8)",
          [r.id, r.type, r.requester, r.status, r.request, r.delegator, r.delegate, r.createdAt],
        );
      }
      before = (await c.query("SELECT * FROM grants ORDER BY seq")).rows;
    } finally {
      await c.end();
    }
    const s = await openPostgresStore({ target: postgresTarget(url), maxConnections: 2 });
    try {
      await expectListingsOf(s, rows);
    } finally {
      await s.close();
    }
    const check = await client(url);
    try {
      expect((await check.query("SELECT * FROM grants ORDER BY seq")).rows).toEqual(before);
      const indexes = await check.query("SELECT indexname FROM pg_indexes WHERE tablename = 'grants'");
      const names = indexes.rows.map((r) => r.indexname);
      expect(names).not.toContain("grants_by_status");
      expect(names).not.toContain("grants_by_type");
      expect(names).toContain("grants_delegations");
    } finally {
      await check.end();
    }
  });

  it("refuses a database migrated by a newer apes", async () => {
    const url = await server.createDatabase("newer");
    const c = await client(url);
    try {
      await migrate(c);
      await c.query("INSERT INTO apes_idp_migrations (version, what) VALUES (999, 'future')");
      await expect(migrate(c)).rejects.toThrow(/newer than this apes knows/);
    } finally {
      await c.end();
    }
  });
});

describe("signing keys sealed with the database key file", () => {
  it("stores no private key in the clear; another key file, or a value moved to another row, is refused", async () => {
    const url = await server.createDatabase("seal");
    const sealKey = randomBytes(32);
    const s = await openPostgresStore({ target: postgresTarget(url), sealKey });
    const c = await client(url);
    try {
      const k1 = newSigningKeyRecord(1);
      const k2 = newSigningKeyRecord(2);
      await s.addSigningKey(k1);
      await s.addSigningKey(k2);
      expect((await s.listSigningKeys()).map((k) => k.privateKey)).toEqual([k1.privateKey, k2.privateKey]);
      const { rows } = await c.query("SELECT kid, private_key FROM signing_keys");
      for (const r of rows) {
        expect(r.private_key).toMatch(/^aes256gcm:v1:/);
        expect(r.private_key).not.toContain("PRIVATE KEY");
      }
      const other = await openPostgresStore({ target: postgresTarget(url), sealKey: randomBytes(32) });
      await expect(other.listSigningKeys()).rejects.toThrow(/does not open with this database key file/);
      await other.close();
      const none = await openPostgresStore({ target: postgresTarget(url) });
      await expect(none.listSigningKeys()).rejects.toThrow(/database key file/);
      await none.close();
      // A sealed value copied onto another key's row does not open there (the kid is bound in).
      await c.query(
        "UPDATE signing_keys SET private_key = (SELECT private_key FROM signing_keys WHERE kid = $1) WHERE kid = $2",
        [k1.kid, k2.kid],
      );
      await expect(s.listSigningKeys()).rejects.toThrow(/does not open/);
      // A key stored in the clear (not by apes) is refused, not used.
      await c.query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2", [k2.privateKey, k2.kid]);
      await expect(s.listSigningKeys()).rejects.toThrow(/not sealed/);
    } finally {
      await c.end();
      await s.close();
    }
  });

  it("the key file must be private and exactly 32 bytes (raw or base64)", () => {
    const f = join(dir, "key");
    writeFileSync(f, randomBytes(32), { mode: 0o600 });
    expect(loadKeyFile(f)).toHaveLength(32);
    writeFileSync(f, `${randomBytes(32).toString("base64")}\n`);
    expect(loadKeyFile(f)).toHaveLength(32);
    chmodSync(f, 0o640);
    expect(() => loadKeyFile(f)).toThrow(/readable by others/);
    chmodSync(f, 0o600);
    writeFileSync(f, randomBytes(31));
    expect(() => loadKeyFile(f)).toThrow(KeyFileError);
    writeFileSync(f, "");
    expect(() => loadKeyFile(f)).toThrow(/exactly 32 bytes/);
    expect(() => loadKeyFile(join(dir, "missing"))).toThrow(/cannot open/);
  });
});

describe("database URL and password", () => {
  it("refuses a password in the URL in every spelling, and other schemes", () => {
    for (const url of [
      "postgres://u:p@h/db",
      "postgresql://u:@h/db",
      "postgres://u:p%40ss@h:5432/db",
      "postgres://u@h/db?password=x",
      "postgres://u@h/db?sslpassword=x",
    ]) {
      expect(() => postgresTarget(url), url).toThrow(DatabaseUrlError);
    }
    expect(() => postgresTarget("mysql://u@h/db")).toThrow(/postgres:\/\//);
    expect(() => postgresTarget("postgres:///db")).toThrow(/no host/);
    expect(postgresTarget("postgres://u@h:5432/db").display).toBe("u@h:5432/db");
  });

  it("reads the password from a private file only, and logs in with it", async () => {
    const f = join(dir, "pw");
    writeFileSync(f, `${PASSWORD_ROLE.password}\n`, { mode: 0o600 });
    expect(readPasswordFile(f)).toBe(PASSWORD_ROLE.password);
    const url = await server.createDatabase("pw", PASSWORD_ROLE.user);
    const s = await openPostgresStore({ target: postgresTarget(url, f) });
    await s.close();
    chmodSync(f, 0o644);
    expect(() => readPasswordFile(f)).toThrow(/readable by others/);
    chmodSync(f, 0o600);
    writeFileSync(f, "wrong\n");
    await expect(openPostgresStore({ target: postgresTarget(url, f) })).rejects.toMatchObject({
      code: "28P01",
    });
    writeFileSync(f, "\n");
    expect(() => readPasswordFile(f)).toThrow(/empty/);
  });
});

describe("change notifications", () => {
  it("a dropped notification connection: watchers told to re-read, nothing cached meanwhile, then back", async () => {
    const url = await server.createDatabase("notify");
    const errors: Error[] = [];
    const s = await openPostgresStore({
      target: postgresTarget(url),
      listen: true,
      onListenerError: (e) => errors.push(e),
    });
    const other = await openPostgresStore({ target: postgresTarget(url) });
    try {
      const heard: (string | undefined)[] = [];
      s.lifecycle.watchGrants!((id) => heard.push(id));
      const marker = s.lifecycle.changeMarker!;
      /** Two reads in a row agree: the listener is up (down, every read differs). */
      const steady = () => {
        const first = marker();
        return first === marker();
      };
      expect(steady()).toBe(true);
      const before = marker();
      await other.addUser({ email: "a@x", kind: "human", createdAt: 1 });
      await s.lifecycle.sync!();
      expect(marker()).not.toBe(before);
      const g = await other.insertGrant({
        grant: {
          id: "g1",
          type: "command",
          status: "pending",
          created_at: 1,
          request: {
            requester: "a@x",
            target_host: "h",
            audience: "escapes",
            grant_type: "once",
            command: ["ls"],
          },
        },
      });
      await other.transition(g.grant.id, { from: ["pending"], to: "approved" });
      await s.lifecycle.sync!();
      expect(heard).toEqual(["g1"]);
      s.dropListenerForTest();
      expect(heard).toEqual(["g1", undefined]);
      expect(errors.map((e) => e.message)).toEqual(["dropped for a test"]);
      expect(steady()).toBe(false); // down: every call differs, so nothing is kept
      for (let i = 0; i < 100 && !steady(); i++) await new Promise((r) => setTimeout(r, 20));
      expect(steady()).toBe(true); // reconnected
      await other.transition(g.grant.id, { from: ["approved"], to: "revoked" });
      await s.lifecycle.sync!();
      expect(heard.at(-1)).toBe("g1");
    } finally {
      await other.close();
      await s.close();
    }
  });
});
