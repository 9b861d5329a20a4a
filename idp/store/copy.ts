import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { lockDataDir } from "../../server/lock.ts";
import { VAPID_FILE } from "../notify/notifier.ts";
import { sealSecret } from "./postgres/key-file.ts";
import { type PostgresStore, sealedSettingName } from "./postgres/store.ts";
import { DB_FILE, openSqliteStore } from "./sqlite/store.ts";

/**
 * Moves an embedded installation (a SQLite data dir) into an empty PostgreSQL database: users with
 * their approvers, signing keys (sealed with the database key file on the way), spent challenges
 * and used jtis (a replay stays refused), grants with their seq (so listing cursors handed out
 * before keep their place) and bookkeeping columns, passkeys, invites, web sessions, the revocation
 * feed with its seq (an SP's position in it stays valid), and the OAuth records. One transaction: all of it or nothing. A target
 * that holds any data is refused (no merge: two histories cannot be put in one order). The data
 * dir's lock is held meanwhile, so no server writes to the source while it is read.
 */

export interface CopyCounts {
  users: number;
  approvers: number;
  signing_keys: number;
  challenges: number;
  used_jtis: number;
  grants: number;
  passkeys: number;
  invites: number;
  web_sessions: number;
  revocations: number;
  oauth_clients: number;
  oauth_codes: number;
  refresh_families: number;
  refresh_tokens: number;
  device_codes: number;
  notify_subscriptions: number;
  notify_outbox: number;
  /** The Web Push VAPID key pair (vapid.json in the data dir), sealed into the database: 0 or 1. */
  vapid_keys: number;
}

export class TargetNotEmptyError extends Error {
  constructor(what: string) {
    super(`the target database already holds IdP data (${what}): migrate only into an empty one`);
    this.name = "TargetNotEmptyError";
  }
}

const CHUNK = 1000;
/** The settings row PostgresStore.sealedSetting("vapid") reads (the server's Web Push key pair). */
const VAPID_SETTING = sealedSettingName("vapid");

type Row = Record<string, string | number | null>;

export async function copySqliteToPostgres(
  dataDir: string,
  target: PostgresStore,
  sealKey: Buffer,
): Promise<CopyCounts> {
  const lock = lockDataDir(dataDir, "IdP server");
  try {
    // Opening migrates the source to this version's schema, so every column read below exists.
    openSqliteStore(dataDir).close();
    const db = new DatabaseSync(join(dataDir, DB_FILE), { readOnly: true });
    try {
      return await copy(db, target, sealKey, vapidOf(dataDir));
    } finally {
      db.close();
    }
  } finally {
    lock.release();
  }
}

/** The data dir's VAPID key pair as JSON (idp/notify/notifier.ts), undefined when there is none. */
function vapidOf(dataDir: string): string | undefined {
  const file = join(dataDir, VAPID_FILE);
  if (!existsSync(file)) return undefined;
  const k = JSON.parse(readFileSync(file, "utf8")) as { publicKey?: unknown; privateKey?: unknown };
  if (typeof k.publicKey !== "string" || typeof k.privateKey !== "string") {
    throw new Error(`${file}: not a VAPID key pair`);
  }
  return JSON.stringify({ publicKey: k.publicKey, privateKey: k.privateKey });
}

async function copy(
  db: DatabaseSync,
  target: PostgresStore,
  sealKey: Buffer,
  vapid: string | undefined,
): Promise<CopyCounts> {
  const all = (sql: string) => db.prepare(sql).all() as Row[];
  const c = await target.connect();
  try {
    await c.query("BEGIN");
    // One migration at a time into one database (the same lock key as nothing else uses).
    await c.query("SELECT pg_advisory_xact_lock($1)", [0x61706573 + 1]);
    for (const table of [
      "users",
      "signing_keys",
      "grants",
      "challenges",
      "used_jtis",
      "passkeys",
      "invites",
      "revocations",
      "oauth_clients",
      "refresh_families",
      "notify_subscriptions",
      "notify_outbox",
    ]) {
      const { rows } = await c.query(`SELECT 1 FROM ${table} LIMIT 1`);
      if (rows.length > 0) throw new TargetNotEmptyError(table);
    }
    const insert = async (table: string, columns: string[], casts: string[], rows: Row[], extra = "") => {
      for (let i = 0; i < rows.length; i += CHUNK) {
        const chunk = rows.slice(i, i + CHUNK);
        const arrays = columns.map((col) => chunk.map((r) => r[col] ?? null));
        const select = columns.map((_, j) => `$${j + 1}::${casts[j]}[]`).join(", ");
        await c.query(
          `INSERT INTO ${table} (${columns.join(", ")}) ${extra} SELECT * FROM unnest(${select})`,
          arrays,
        );
      }
      return rows.length;
    };
    // SQLite keeps a subscription's events as "a,b", PostgreSQL as an array.
    const subscriptions = async (rows: Row[]) => {
      for (let i = 0; i < rows.length; i += CHUNK) {
        const chunk = rows.slice(i, i + CHUNK);
        const col = (k: string) => chunk.map((r) => r[k] ?? null);
        await c.query(
          `INSERT INTO notify_subscriptions (id, owner, channel, target, secret, events, created_at)
           SELECT id, owner, channel, target, secret, string_to_array(events, ','), created_at
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
             AS t(id, owner, channel, target, secret, events, created_at)`,
          ["id", "owner", "channel", "target", "secret", "events", "created_at"].map(col),
        );
      }
      return rows.length;
    };
    const users = all("SELECT * FROM users ORDER BY email").map((r) => ({
      ...r,
      admin: r.admin === 1 ? "true" : "false",
      disabled: r.disabled === 1 ? "true" : "false",
    }));
    const counts: Omit<CopyCounts, "vapid_keys"> & { vapid_keys?: number } = {
      users: await insert(
        "users",
        ["email", "kind", "owner", "admin", "disabled", "public_key", "fingerprint", "name", "created_at"],
        ["text", "text", "text", "boolean", "boolean", "text", "text", "text", "bigint"],
        users,
      ),
      approvers: await insert(
        "approvers",
        ["subject", "approver"],
        ["text", "text"],
        all("SELECT subject, approver FROM approvers"),
      ),
      signing_keys: await insert(
        "signing_keys",
        ["kid", "private_key", "created_at", "retired_at", "max_exp"],
        ["text", "text", "bigint", "bigint", "bigint"],
        all("SELECT * FROM signing_keys ORDER BY created_at, kid").map((r) => ({
          ...r,
          private_key: sealSecret(sealKey, String(r.kid), String(r.private_key)),
        })),
      ),
      challenges: await insert(
        "challenges",
        ["challenge", "subject", "expires_at"],
        ["text", "text", "bigint"],
        all("SELECT challenge, subject, expires_at FROM challenges"),
      ),
      used_jtis: await insert(
        "used_jtis",
        ["jti", "expires_at"],
        ["text", "bigint"],
        all("SELECT jti, expires_at FROM used_jtis"),
      ),
      grants: await insert(
        "grants",
        GRANT_COLUMNS,
        GRANT_CASTS,
        all(`SELECT ${GRANT_COLUMNS.join(", ")} FROM grants ORDER BY seq`),
        "OVERRIDING SYSTEM VALUE",
      ),
      passkeys: await insert(
        "passkeys",
        [
          "credential_id",
          "email",
          "public_key",
          "counter",
          "transports",
          "device_type",
          "backed_up",
          "created_at",
          "last_used_at",
        ],
        ["text", "text", "text", "bigint", "jsonb", "text", "boolean", "bigint", "bigint"],
        all("SELECT * FROM passkeys").map((r) => ({ ...r, backed_up: r.backed_up === 1 ? "true" : "false" })),
      ),
      invites: await insert(
        "invites",
        ["id", "email", "created_at", "expires_at", "used_at"],
        ["text", "text", "bigint", "bigint", "bigint"],
        all("SELECT * FROM invites"),
      ),
      web_sessions: await insert(
        "web_sessions",
        ["id", "email", "created_at", "expires_at"],
        ["text", "text", "bigint", "bigint"],
        all("SELECT * FROM web_sessions"),
      ),
      revocations: await insert(
        "revocations",
        ["seq", "kind", "subject", "at"],
        ["bigint", "text", "text", "bigint"],
        all("SELECT seq, kind, subject, at FROM revocations ORDER BY seq"),
      ),
      oauth_clients: await insert(
        "oauth_clients",
        ["id", "redirect_uris", "created_at"],
        ["text", "jsonb", "bigint"],
        all("SELECT * FROM oauth_clients"),
      ),
      oauth_codes: await insert("oauth_codes", CODE_COLUMNS, CODE_CASTS, all("SELECT * FROM oauth_codes")),
      refresh_families: await insert(
        "refresh_families",
        ["family_id", "client_id", "sub", "created_at", "expires_at", "revoked_at"],
        ["text", "text", "text", "bigint", "bigint", "bigint"],
        all("SELECT * FROM refresh_families"),
      ),
      refresh_tokens: await insert(
        "refresh_tokens",
        REFRESH_COLUMNS,
        REFRESH_CASTS,
        all("SELECT * FROM refresh_tokens"),
      ),
      device_codes: await insert(
        "device_codes",
        DEVICE_COLUMNS,
        DEVICE_CASTS,
        all("SELECT * FROM device_codes"),
      ),
      notify_subscriptions: await subscriptions(all("SELECT * FROM notify_subscriptions")),
      notify_outbox: await insert(
        "notify_outbox",
        OUTBOX_COLUMNS,
        OUTBOX_CASTS,
        all(`SELECT ${OUTBOX_COLUMNS.join(", ")} FROM notify_outbox ORDER BY id`),
        "OVERRIDING SYSTEM VALUE",
      ),
    };
    await c.query(
      "SELECT setval(pg_get_serial_sequence('notify_outbox', 'id'), GREATEST((SELECT max(id) FROM notify_outbox), 1), (SELECT max(id) FROM notify_outbox) IS NOT NULL)",
    );
    // Browsers' push subscriptions are bound to this public key: the instances keep signing with it.
    if (vapid !== undefined) {
      await c.query("INSERT INTO settings (name, value) VALUES ($1, $2)", [
        VAPID_SETTING,
        sealSecret(sealKey, VAPID_SETTING, vapid),
      ]);
    }
    counts.vapid_keys = vapid === undefined ? 0 : 1;
    // New events continue after the copied ones: an SP's `after` keeps meaning the same.
    await c.query(
      "SELECT setval('revocations_seq', GREATEST((SELECT max(seq) FROM revocations), 1), (SELECT max(seq) FROM revocations) IS NOT NULL)",
    );
    // New grants continue after the copied ones: positions (and cursors) keep growing.
    await c.query(
      "SELECT setval(pg_get_serial_sequence('grants', 'seq'), GREATEST((SELECT max(seq) FROM grants), 1), (SELECT max(seq) FROM grants) IS NOT NULL)",
    );
    await c.query("COMMIT");
    return counts as CopyCounts;
  } catch (e) {
    await c.query("ROLLBACK").catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}

const GRANT_COLUMNS = [
  "seq",
  "id",
  "type",
  "requester",
  "status",
  "grant_type",
  "request",
  "match_key",
  "delegator",
  "delegate",
  "decided_by",
  "created_at",
  "decided_at",
  "expires_at",
  "used_at",
  "version",
  "created_act",
  "decided_act",
  "approval_proof",
];
const GRANT_CASTS = [
  "bigint",
  "text",
  "text",
  "text",
  "text",
  "text",
  "jsonb",
  "text",
  "text",
  "text",
  "text",
  "bigint",
  "bigint",
  "bigint",
  "bigint",
  "integer",
  "text",
  "text",
  "text",
];
const OUTBOX_COLUMNS = [
  "id",
  "key",
  "subscription_id",
  "grant_id",
  "event",
  "payload",
  "status",
  "attempts",
  "due_at_ms",
  "last_error",
  "created_at",
  "delivered_at",
];
const OUTBOX_CASTS = [
  "bigint",
  "text",
  "text",
  "text",
  "text",
  "text",
  "text",
  "integer",
  "bigint",
  "text",
  "bigint",
  "bigint",
];
const CODE_COLUMNS = [
  "code_hash",
  "client_id",
  "redirect_uri",
  "code_challenge",
  "nonce",
  "sub",
  "family_id",
  "created_at",
  "expires_at",
  "used_at",
];
const CODE_CASTS = ["text", "text", "text", "text", "text", "text", "text", "bigint", "bigint", "bigint"];
const REFRESH_COLUMNS = [
  "token_hash",
  "family_id",
  "client_id",
  "sub",
  "act",
  "acting_party",
  "delegation_grant",
  "created_at",
  "expires_at",
  "used_at",
];
const REFRESH_CASTS = ["text", "text", "text", "text", "text", "text", "text", "bigint", "bigint", "bigint"];
const DEVICE_COLUMNS = [
  "device_hash",
  "user_code",
  "client_id",
  "status",
  "sub",
  "poll_interval",
  "last_poll_at",
  "created_at",
  "expires_at",
  "decided_at",
];
const DEVICE_CASTS = [
  "text",
  "text",
  "text",
  "text",
  "text",
  "integer",
  "bigint",
  "bigint",
  "bigint",
  "bigint",
];
