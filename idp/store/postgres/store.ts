import pg from "pg";
import { canonicalIdentity } from "../../../protocol/names.ts";
import { type PostgresTarget, pgClientConfig } from "../../../server/postgres.ts";
import {
  type AuthCodeColumns,
  authCodeOf,
  type ClientColumns,
  clientOf,
  type DeviceCodeColumns,
  deviceCodeOf,
  GRANT_COLS,
  type GrantColumns,
  type InviteColumns,
  inviteOf,
  type NotificationColumns,
  notificationOf,
  type PasskeyColumns,
  passkeyOf,
  type RefreshTokenColumns,
  refreshTokenOf,
  type SigningKeyColumns,
  type SubscriptionColumns,
  signingKeyOf,
  storedGrantOf,
  subscriptionOf,
  type UserColumns,
  userOf,
  type WebSessionColumns,
  webSessionOf,
} from "../rows.ts";
import {
  type AttemptOutcome,
  type AuthCodeRecord,
  type ClientRecord,
  type DeviceCodeRecord,
  type GrantPage,
  type GrantQuery,
  type InviteRecord,
  type NewGrant,
  type NewNotification,
  type NewUser,
  type NotificationQuery,
  type NotificationRecord,
  type PasskeyRecord,
  REVOCATION_RETENTION_S,
  type RefreshTokenRecord,
  type RevocationEvent,
  type SigningKeyRecord,
  type Store,
  type StoredGrant,
  type StoreLifecycle,
  type SubscriptionRecord,
  type Transition,
  type UserRecord,
  type WebSessionRecord,
} from "../types.ts";
import { openSecret, sealSecret } from "./key-file.ts";
import { migrate } from "./migrations.ts";

/**
 * The Store on PostgreSQL (the `pg` client), for several IdP instances on one database. Every
 * method is one statement on a pooled connection, committed when it resolves (nothing to flush):
 * each single-use guarantee is one conditional statement (UPDATE ... WHERE status IN (...)
 * RETURNING; INSERT ... ON CONFLICT DO NOTHING RETURNING), decided by the database for every
 * instance at once, never read-then-write.
 *
 * Change notifications: with `listen`, one dedicated connection (not from the pool) LISTENs to the
 * channels the schema's triggers notify (migrations.ts). A signing-key or user change bumps
 * changeMarker() (the keyring re-reads; see keys.ts); a grant change is passed to watchGrants
 * subscribers (long polls answer). While that connection is down the store says so: changeMarker()
 * differs on every call (nothing is kept in memory), and subscribers hear `undefined` ("re-read
 * what you wait on") at once and every second until it is back; it reconnects with backoff.
 */

const CHANNEL_CHANGED = "apes_idp_changed";
const CHANNEL_GRANT = "apes_grant";
const CHANNEL_SYNC = "apes_idp_sync";
const PREPARED_MAX = 200;

export interface PostgresOptions {
  target: PostgresTarget;
  /** The database key file's key (key-file.ts): required to read or add signing keys. */
  sealKey?: Buffer;
  /** Connections in the pool (default 10). */
  maxConnections?: number;
  /** Per statement, in the server (default 5000). */
  statementTimeoutMs?: number;
  /** Waiting for a connection, and connecting (default 5000). */
  connectTimeoutMs?: number;
  /** Open the notification connection (the server; the admin commands need none). */
  listen?: boolean;
  /** Problems of the notification connection (it reconnects by itself). */
  onListenerError?(e: Error): void;
  /** The application_name the database shows in pg_stat_activity. */
  applicationName?: string;
}

/*
 * The rows as node-postgres gives them (booleans, arrays and jsonb decoded already), mapped in
 * ../rows.ts; a user's approvers come with the row (USER_SELECT).
 */
type UserRow = UserColumns & { approvers: string[] | null };
type GrantRow = GrantColumns;

function grantFromRow(r: GrantRow): StoredGrant {
  return storedGrantOf(r, r.request);
}

function userFromRow(r: UserRow): UserRecord {
  return userOf(r, { admin: r.admin, disabled: r.disabled, approvers: r.approvers ?? [] });
}

function passkeyFromRow(r: PasskeyColumns): PasskeyRecord {
  return passkeyOf(r, { transports: r.transports, backedUp: r.backed_up });
}

function clientFromRow(r: ClientColumns): ClientRecord {
  return clientOf(r, r.redirect_uris);
}

function subscriptionFromRow(r: SubscriptionColumns): SubscriptionRecord {
  return subscriptionOf(r, r.events);
}

/** Seconds a family revoked before its first token is kept (see revokeRefreshFamily). */
const FAMILY_GRACE_S = 600;

/**
 * Outbox rows as one INSERT ... SELECT over arrays (the placeholders are appended to `args`), for a
 * CTE of the grant's own statement: written together with the change or not at all. `onlyIf` makes
 * it conditional on another CTE having returned a row (a transition that applied).
 */
function outboxInsert(
  rows: readonly NewNotification[],
  arg: (v: unknown) => string,
  onlyIf?: string,
): string {
  const cols = [
    arg(rows.map((r) => r.key)),
    arg(rows.map((r) => r.subscriptionId)),
    arg(rows.map((r) => r.grantId ?? null)),
    arg(rows.map((r) => r.event)),
    arg(rows.map((r) => r.payload)),
    arg(rows.map((r) => r.createdAt)),
  ];
  return `INSERT INTO notify_outbox (key, subscription_id, grant_id, event, payload, status, attempts, due_at_ms, created_at)
    SELECT k, sid, gid, ev, pl, 'pending', 0, ca * 1000, ca
    FROM unnest(${cols[0]}::text[], ${cols[1]}::text[], ${cols[2]}::text[], ${cols[3]}::text[], ${cols[4]}::text[], ${cols[5]}::bigint[]) AS o(k, sid, gid, ev, pl, ca)
    ${onlyIf ? `WHERE EXISTS (SELECT 1 FROM ${onlyIf})` : ""}
    ON CONFLICT (key) DO NOTHING`;
}

const USER_SELECT = `SELECT u.*, (SELECT array_agg(a.approver ORDER BY a.approver COLLATE "C") FROM approvers a WHERE a.subject = u.email) AS approvers FROM users u`;

function clientConfig(o: PostgresOptions): pg.ClientConfig {
  return pgClientConfig(o.target, {
    ...(o.statementTimeoutMs !== undefined ? { statementTimeoutMs: o.statementTimeoutMs } : {}),
    ...(o.connectTimeoutMs !== undefined ? { connectTimeoutMs: o.connectTimeoutMs } : {}),
    applicationName: o.applicationName ?? "apes-idp",
  });
}

/** Connects, migrates (once, under an advisory lock, however many instances start together), opens. */
export async function openPostgresStore(o: PostgresOptions): Promise<PostgresStore> {
  const pool = new pg.Pool({
    ...clientConfig(o),
    max: o.maxConnections ?? 10,
    idleTimeoutMillis: 30_000,
  });
  // An idle connection that breaks is dropped by the pool; without a listener it would crash us.
  pool.on("error", () => {});
  try {
    const client = await pool.connect();
    try {
      await migrate(client);
    } finally {
      client.release();
    }
  } catch (e) {
    await pool.end().catch(() => undefined);
    throw e;
  }
  const store = new PostgresStore(pool, o);
  try {
    if (o.listen) await store.startListening();
  } catch (e) {
    await store.close().catch(() => undefined); // also stops the listener's reconnect attempts
    throw e;
  }
  return store;
}

/** The settings row (and sealing label) of a sealedSetting. */
export const sealedSettingName = (name: string) => `setting:${name}`;

export class PostgresStore implements Store {
  private readonly pool: pg.Pool;
  private readonly options: PostgresOptions;
  private closed = false;

  // --- notifications ---
  private listener: pg.Client | undefined;
  private listening = false;
  private marker = 0;
  private readonly grantWatchers = new Set<(id: string | undefined) => void>();
  private readonly syncWaiters = new Map<string, () => void>();
  private syncCounter = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private gapTimer: NodeJS.Timeout | undefined;
  private backoffMs = 100;

  readonly lifecycle: StoreLifecycle;

  constructor(pool: pg.Pool, options: PostgresOptions) {
    this.pool = pool;
    this.options = options;
    this.lifecycle = options.listen
      ? {
          // Down: a new value every call, so no one keeps anything read before.
          changeMarker: () => (this.listening ? this.marker : ++this.marker),
          sync: () => this.sync(),
          watchGrants: (onChange) => {
            this.grantWatchers.add(onChange);
            return () => this.grantWatchers.delete(onChange);
          },
        }
      : {};
  }

  /** Opens the notification connection (resolves once it listens; later drops reconnect). */
  async startListening(): Promise<void> {
    await this.connectListener();
  }

  private async connectListener(): Promise<void> {
    const c = new pg.Client({ ...clientConfig(this.options), application_name: "apes-idp-listen" });
    c.on("notification", (n) => this.notified(n.channel, n.payload));
    c.on("error", (e) => this.listenerLost(c, e));
    c.on("end", () => this.listenerLost(c, new Error("the notification connection closed")));
    this.listener = c;
    await c.connect();
    // No statement timeout on a connection that only waits.
    await c.query("SET statement_timeout = 0");
    await c.query(`LISTEN ${CHANNEL_CHANGED}; LISTEN ${CHANNEL_GRANT}; LISTEN ${CHANNEL_SYNC}`);
    if (this.listener !== c || this.closed) {
      await c.end().catch(() => undefined);
      return;
    }
    this.listening = true;
    this.backoffMs = 100;
    clearInterval(this.gapTimer);
    this.gapTimer = undefined;
    // Whatever changed while no one listened: everything is to be read again.
    this.marker++;
    for (const w of this.grantWatchers) w(undefined);
  }

  private listenerLost(c: pg.Client, e: Error): void {
    if (this.listener !== c) return;
    this.listener = undefined;
    this.listening = false;
    c.removeAllListeners("end");
    c.end().catch(() => undefined);
    for (const resolve of this.syncWaiters.values()) resolve();
    this.syncWaiters.clear();
    if (this.closed) return;
    this.options.onListenerError?.(e);
    for (const w of this.grantWatchers) w(undefined);
    this.gapTimer ??= setInterval(() => {
      for (const w of this.grantWatchers) w(undefined);
    }, 1000);
    this.gapTimer.unref();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, 5000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      const attempt = this.listener;
      this.connectListener().catch((e: Error) => {
        if (this.closed) return;
        if (this.listener !== undefined && this.listener !== attempt) this.listenerLost(this.listener, e);
        else this.scheduleReconnect();
      });
    }, delay);
    this.reconnectTimer.unref();
  }

  private notified(channel: string, payload: string | undefined): void {
    if (channel === CHANNEL_CHANGED) this.marker++;
    else if (channel === CHANNEL_GRANT && payload) for (const w of this.grantWatchers) w(payload);
    else if (channel === CHANNEL_SYNC && payload) {
      const resolve = this.syncWaiters.get(payload);
      this.syncWaiters.delete(payload);
      resolve?.();
    }
  }

  /**
   * Resolves once every notification committed before the call has been received here: the
   * listener notifies itself and waits for its own message, and PostgreSQL delivers notifications
   * in commit order. After it, changeMarker() reflects every change committed before the call.
   */
  private async sync(): Promise<void> {
    const c = this.listener;
    if (!c || !this.listening) return; // down: changeMarker() already differs on every call
    const token = `${process.pid}:${++this.syncCounter}`;
    const arrived = new Promise<void>((resolve) => this.syncWaiters.set(token, resolve));
    try {
      await c.query("SELECT pg_notify($1, $2)", [CHANNEL_SYNC, token]);
    } catch {
      this.syncWaiters.delete(token);
      return;
    }
    await arrived;
  }

  /** Drops the notification connection as a network failure would (tests of the fallback). */
  dropListenerForTest(): void {
    const c = this.listener;
    if (c) this.listenerLost(c, new Error("dropped for a test"));
  }

  /**
   * Runs one statement on a pooled connection, as a named prepared statement (parsed and planned
   * once per connection) for the first PREPARED_MAX distinct texts: the store's statements are a
   * fixed set, plus a bounded number of variants of the listing and transition ones.
   */
  private run<T extends pg.QueryResultRow>(sql: string, args: unknown[] = []): Promise<pg.QueryResult<T>> {
    let name = this.statementNames.get(sql);
    if (name === undefined && this.statementNames.size < PREPARED_MAX) {
      name = `apes_${this.statementNames.size}`;
      this.statementNames.set(sql, name);
    }
    return this.pool.query<T>(
      name === undefined ? { text: sql, values: args } : { name, text: sql, values: args },
    );
  }

  private readonly statementNames = new Map<string, string>();

  private async rows<T extends pg.QueryResultRow>(sql: string, args: unknown[] = []): Promise<T[]> {
    return (await this.run<T>(sql, args)).rows;
  }

  // --- users ---

  async addUser(u: NewUser): Promise<void> {
    for (const name of [u.email, ...(u.owner ? [u.owner] : []), ...(u.approvers ?? [])]) {
      if (canonicalIdentity(name) !== name)
        throw new Error(`not a normalised identity: ${JSON.stringify(name)}`);
    }
    // One statement: the user and its approvers are added together or not at all.
    await this.run(
      `WITH u AS (
         INSERT INTO users (email, kind, owner, admin, disabled, public_key, fingerprint, name, created_at)
         VALUES ($1, $2, $3, $4, false, $5, $6, $7, $8) RETURNING email)
       INSERT INTO approvers (subject, approver) SELECT u.email, a FROM u, unnest($9::text[]) AS a`,
      [
        u.email,
        u.kind,
        u.owner ?? null,
        u.admin === true,
        u.publicKey ?? null,
        u.fingerprint ?? null,
        u.name ?? null,
        u.createdAt,
        [...new Set(u.approvers ?? [])],
      ],
    );
  }

  async getUser(name: string): Promise<UserRecord | undefined> {
    const email = canonicalIdentity(name);
    if (email === undefined) return undefined;
    const [r] = await this.rows<UserRow>(`${USER_SELECT} WHERE u.email = $1`, [email]);
    return r ? userFromRow(r) : undefined;
  }

  async listUsers(): Promise<UserRecord[]> {
    return (await this.rows<UserRow>(`${USER_SELECT} ORDER BY u.email COLLATE "C"`)).map(userFromRow);
  }

  async setDisabled(name: string, disabled: boolean, at: number): Promise<boolean> {
    const email = canonicalIdentity(name);
    if (email === undefined) return false;
    // One statement: the change and its revocation event commit together or not at all.
    const [r] = await this.rows<{ n: number }>(
      `WITH u AS (UPDATE users SET disabled = $1 WHERE email = $2 RETURNING email),
         e AS (INSERT INTO revocations (kind, subject, at) SELECT 'user', email, $3 FROM u WHERE $1)
       SELECT count(*)::int AS n FROM u`,
      [disabled, email, at],
    );
    return r?.n === 1;
  }

  async revocationsAfter(after: number, limit: number): Promise<RevocationEvent[]> {
    return this.rows<RevocationEvent>(
      "SELECT seq, kind, subject, at FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2",
      [after, limit],
    );
  }

  async lastRevocation(): Promise<number> {
    const [r] = await this.rows<{ seq: number }>(
      "SELECT COALESCE(MAX(seq), 0)::bigint AS seq FROM revocations",
    );
    return r?.seq ?? 0;
  }

  async subordinatesOf(name: string): Promise<string[]> {
    const email = canonicalIdentity(name);
    if (email === undefined) return [];
    const rows = await this.rows<{ email: string }>(
      "SELECT email FROM users WHERE owner = $1 UNION SELECT subject FROM approvers WHERE approver = $1",
      [email],
    );
    return rows.map((r) => r.email);
  }

  // --- signing keys (sealed with the database key file) ---

  private sealKey(): Buffer {
    if (!this.options.sealKey) {
      throw new Error("the signing keys need the database key file (--database-key-file)");
    }
    return this.options.sealKey;
  }

  async listSigningKeys(): Promise<SigningKeyRecord[]> {
    const rows = await this.rows<SigningKeyColumns>(
      'SELECT * FROM signing_keys ORDER BY created_at, kid COLLATE "C"',
    );
    if (rows.length === 0) return [];
    const key = this.sealKey();
    return rows.map((r) => signingKeyOf(r, openSecret(key, r.kid, r.private_key)));
  }

  async addSigningKey(k: SigningKeyRecord): Promise<void> {
    await this.run(
      "INSERT INTO signing_keys (kid, private_key, created_at, retired_at, max_exp) VALUES ($1, $2, $3, $4, $5)",
      [k.kid, sealSecret(this.sealKey(), k.kid, k.privateKey), k.createdAt, k.retiredAt ?? null, k.maxExp],
    );
  }

  async retireSigningKeys(exceptKid: string, now: number): Promise<void> {
    await this.run("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND kid <> $2", [
      now,
      exceptKid,
    ]);
  }

  async raiseKeyMaxExp(kid: string, maxExp: number): Promise<void> {
    await this.run("UPDATE signing_keys SET max_exp = $1 WHERE kid = $2 AND max_exp < $1", [maxExp, kid]);
  }

  // --- single-use values ---

  async spendChallenge(nonce: string, subject: string, expiresAt: number): Promise<boolean> {
    // One conditional insert decides which of concurrent uses wins, on every instance.
    const r = await this.run(
      "INSERT INTO challenges (challenge, subject, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
      [nonce, subject, expiresAt],
    );
    return r.rowCount === 1;
  }

  async useJti(jti: string, expiresAt: number): Promise<boolean> {
    const r = await this.run(
      "INSERT INTO used_jtis (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
      [jti, expiresAt],
    );
    return r.rowCount === 1;
  }

  async purgeExpired(now: number): Promise<void> {
    await this.run(
      `WITH c AS (DELETE FROM challenges WHERE expires_at <= $1),
         j AS (DELETE FROM used_jtis WHERE expires_at <= $1),
         r AS (DELETE FROM revocations WHERE at <= $2),
         o AS (DELETE FROM oauth_codes WHERE expires_at <= $1)
       DELETE FROM device_codes WHERE expires_at <= $1`,
      [now, now - REVOCATION_RETENTION_S],
    );
    // Tokens before their families (the foreign key); a family expires with its last token.
    await this.run("DELETE FROM refresh_tokens WHERE expires_at <= $1", [now]);
    await this.run("DELETE FROM refresh_families WHERE expires_at <= $1", [now]);
  }

  // --- OAuth ---

  async addClient(c: ClientRecord): Promise<void> {
    await this.run("INSERT INTO oauth_clients (id, redirect_uris, created_at) VALUES ($1, $2, $3)", [
      c.id,
      JSON.stringify(c.redirectUris),
      c.createdAt,
    ]);
  }

  async getClient(id: string): Promise<ClientRecord | undefined> {
    const [r] = await this.rows<ClientColumns>("SELECT * FROM oauth_clients WHERE id = $1", [id]);
    return r ? clientFromRow(r) : undefined;
  }

  async listClients(): Promise<ClientRecord[]> {
    return (await this.rows<ClientColumns>('SELECT * FROM oauth_clients ORDER BY id COLLATE "C"')).map(
      clientFromRow,
    );
  }

  async removeClient(id: string): Promise<boolean> {
    return (await this.run("DELETE FROM oauth_clients WHERE id = $1", [id])).rowCount === 1;
  }

  async insertAuthCode(c: AuthCodeRecord): Promise<void> {
    await this.run(
      `INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, nonce, sub, family_id, created_at, expires_at, used_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [
        c.codeHash,
        c.clientId,
        c.redirectUri,
        c.codeChallenge,
        c.nonce,
        c.sub,
        c.familyId,
        c.createdAt,
        c.expiresAt,
        c.usedAt ?? null,
      ],
    );
  }

  async spendAuthCode(codeHash: string, now: number): Promise<AuthCodeRecord | undefined> {
    const [r] = await this.rows<AuthCodeColumns>(
      "UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING *",
      [now, codeHash],
    );
    return r ? authCodeOf(r) : undefined;
  }

  async getAuthCode(codeHash: string): Promise<AuthCodeRecord | undefined> {
    const [r] = await this.rows<AuthCodeColumns>("SELECT * FROM oauth_codes WHERE code_hash = $1", [
      codeHash,
    ]);
    return r ? authCodeOf(r) : undefined;
  }

  async insertRefreshToken(t: RefreshTokenRecord): Promise<void> {
    // One statement: the family (created, or its expiry raised to the newest token's) and the token.
    await this.run(
      `WITH f AS (
         INSERT INTO refresh_families (family_id, client_id, sub, created_at, expires_at) VALUES ($2, $3, $4, $8, $9)
         ON CONFLICT (family_id) DO UPDATE SET expires_at = GREATEST(refresh_families.expires_at, excluded.expires_at))
       INSERT INTO refresh_tokens (token_hash, family_id, client_id, sub, act, acting_party, delegation_grant, created_at, expires_at, used_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [
        t.tokenHash,
        t.familyId,
        t.clientId,
        t.sub,
        t.act,
        t.actingParty ?? null,
        t.delegationGrant ?? null,
        t.createdAt,
        t.expiresAt,
        t.usedAt ?? null,
      ],
    );
  }

  async spendRefreshToken(tokenHash: string, now: number): Promise<RefreshTokenRecord | undefined> {
    // One compare-and-set: unspent, unexpired, its family not revoked. FOR SHARE on the family row
    // waits for a concurrent revocation (which locks it) and re-checks it: a spend and a revocation
    // of one family on two instances are ordered, as in one process.
    const [r] = await this.rows<RefreshTokenColumns>(
      `UPDATE refresh_tokens SET used_at = $1
       WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1
         AND EXISTS (SELECT 1 FROM refresh_families f WHERE f.family_id = refresh_tokens.family_id AND f.revoked_at IS NULL FOR SHARE)
       RETURNING *`,
      [now, tokenHash],
    );
    return r ? refreshTokenOf(r) : undefined;
  }

  async getRefreshToken(
    tokenHash: string,
  ): Promise<(RefreshTokenRecord & { familyRevoked: boolean }) | undefined> {
    const [r] = await this.rows<RefreshTokenColumns & { family_revoked_at: number | null }>(
      `SELECT t.*, f.revoked_at AS family_revoked_at FROM refresh_tokens t
       LEFT JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = $1`,
      [tokenHash],
    );
    return r ? { ...refreshTokenOf(r), familyRevoked: r.family_revoked_at !== null } : undefined;
  }

  async revokeRefreshFamily(familyId: string, now: number): Promise<boolean> {
    // A family not stored yet (a code replayed while its first exchange is under way) is stored
    // revoked for FAMILY_GRACE_S (longer than a code lives): the token that exchange is about to
    // store is dead on arrival. One statement, whichever instance the two requests reach.
    const r = await this.run(
      `INSERT INTO refresh_families (family_id, client_id, sub, created_at, expires_at, revoked_at) VALUES ($1, '', '', $2, $3, $2)
       ON CONFLICT (family_id) DO UPDATE SET revoked_at = excluded.revoked_at WHERE refresh_families.revoked_at IS NULL`,
      [familyId, now, now + FAMILY_GRACE_S],
    );
    return r.rowCount === 1;
  }

  async insertDeviceCode(d: DeviceCodeRecord): Promise<void> {
    await this.run(
      `INSERT INTO device_codes (device_hash, user_code, client_id, status, sub, poll_interval, last_poll_at, created_at, expires_at, decided_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [
        d.deviceHash,
        d.userCode,
        d.clientId,
        d.status,
        d.sub ?? null,
        d.interval,
        d.lastPollAt ?? null,
        d.createdAt,
        d.expiresAt,
        d.decidedAt ?? null,
      ],
    );
  }

  async getDeviceCode(deviceHash: string): Promise<DeviceCodeRecord | undefined> {
    const [r] = await this.rows<DeviceCodeColumns>("SELECT * FROM device_codes WHERE device_hash = $1", [
      deviceHash,
    ]);
    return r ? deviceCodeOf(r) : undefined;
  }

  async getDeviceCodeByUserCode(userCode: string, now: number): Promise<DeviceCodeRecord | undefined> {
    const [r] = await this.rows<DeviceCodeColumns>(
      "SELECT * FROM device_codes WHERE user_code = $1 AND expires_at > $2",
      [userCode, now],
    );
    return r ? deviceCodeOf(r) : undefined;
  }

  async decideDeviceCode(
    userCode: string,
    to: "approved" | "denied",
    sub: string,
    now: number,
  ): Promise<boolean> {
    const r = await this.run(
      "UPDATE device_codes SET status = $1, sub = $2, decided_at = $3 WHERE user_code = $4 AND status = 'pending' AND expires_at > $3",
      [to, sub, now, userCode],
    );
    return r.rowCount === 1;
  }

  async recordDevicePoll(deviceHash: string, now: number, interval: number): Promise<void> {
    await this.run("UPDATE device_codes SET last_poll_at = $1, poll_interval = $2 WHERE device_hash = $3", [
      now,
      interval,
      deviceHash,
    ]);
  }

  async spendDeviceCode(deviceHash: string, now: number): Promise<DeviceCodeRecord | undefined> {
    const [r] = await this.rows<DeviceCodeColumns>(
      "UPDATE device_codes SET status = 'used' WHERE device_hash = $1 AND status = 'approved' AND expires_at > $2 RETURNING *",
      [deviceHash, now],
    );
    return r ? deviceCodeOf(r) : undefined;
  }

  // --- the issuer, for the offline admin commands' invite links ---

  async recordIssuer(issuer: string): Promise<void> {
    await this.run(
      "INSERT INTO settings (name, value) VALUES ('issuer', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
      [issuer],
    );
  }

  async recordedIssuer(): Promise<string | undefined> {
    const [r] = await this.rows<{ value: string }>("SELECT value FROM settings WHERE name = 'issuer'");
    return r?.value;
  }

  // --- grants ---

  async insertGrant(n: NewGrant): Promise<StoredGrant> {
    const g = n.grant;
    const insert = `INSERT INTO grants (id, type, requester, status, grant_type, request, match_key, delegator, delegate, decided_by, created_at, decided_at, expires_at, used_at, created_act)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING seq`;
    const args: unknown[] = [
      g.id,
      g.type,
      g.request.requester,
      g.status,
      g.request.grant_type,
      JSON.stringify(g.request),
      n.matchKey ?? null,
      g.type === "delegation" ? (g.request.delegator ?? null) : null,
      g.type === "delegation" ? (g.request.delegate ?? null) : null,
      g.decided_by ?? null,
      g.created_at,
      g.decided_at ?? null,
      g.expires_at ?? null,
      g.used_at ?? null,
      n.actingParty ?? null,
    ];
    // The grant's notifications in the same statement: both commit, or neither.
    const arg = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    const sql = n.outbox?.length
      ? `WITH g AS (${insert}), o AS (${outboxInsert(n.outbox, arg)}) SELECT seq FROM g`
      : insert;
    const [r] = await this.rows<{ seq: number }>(sql, args);
    const stored: StoredGrant = { grant: g, version: 1, seq: r!.seq };
    if (n.actingParty !== undefined) stored.createdAct = n.actingParty;
    return stored;
  }

  async getGrant(id: string): Promise<StoredGrant | undefined> {
    const [r] = await this.rows<GrantRow>(`SELECT ${GRANT_COLS} FROM grants WHERE id = $1`, [id]);
    return r ? grantFromRow(r) : undefined;
  }

  async findReusable(requester: string, matchKey: string, now: number): Promise<StoredGrant | undefined> {
    const [r] = await this.rows<GrantRow>(
      `SELECT ${GRANT_COLS} FROM grants
       WHERE requester = $1 AND match_key = $2 AND status = 'approved' AND grant_type <> 'once'
         AND (expires_at IS NULL OR expires_at > $3)
       ORDER BY seq DESC LIMIT 1`,
      [requester, matchKey, now],
    );
    return r ? grantFromRow(r) : undefined;
  }

  async queryGrants(q: GrantQuery): Promise<GrantPage> {
    if (q.requesters && q.requesters.length === 0) return { items: [], hasMore: false };
    // One index range scan per scope, each bounded by limit+1, merged by the database: the cost
    // depends on the page size and the number of scopes, not on how many grants are stored.
    const args: unknown[] = [];
    const arg = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    // Delegations by their partial index, whose WHERE a literal implies and a parameter may not.
    const delegationsOnly = q.type === "delegation";
    const common: string[] = [];
    if (q.status) common.push(`status = ${arg(q.status)}`);
    if (q.type && !delegationsOnly) common.push(`type = ${arg(q.type)}`);
    if (q.before) common.push(`seq < ${arg(q.before.seq)}`);
    if (delegationsOnly) common.push("type = 'delegation'");
    const limit = arg(q.limit + 1);
    const where = (scope?: string) => {
      const all = [...(scope ? [scope] : []), ...common];
      return all.length ? `WHERE ${all.join(" AND ")}` : "";
    };
    const scan = (scope?: string) =>
      `(SELECT ${GRANT_COLS} FROM grants ${where(scope)} ORDER BY seq DESC LIMIT ${limit})`;
    const scans: string[] = [];
    if (q.party !== undefined) {
      const p = arg(q.party);
      scans.push(scan(`delegator = ${p}`), scan(`delegate = ${p}`));
    } else if (q.delegator !== undefined) scans.push(scan(`delegator = ${arg(q.delegator)}`));
    else if (q.delegate !== undefined) scans.push(scan(`delegate = ${arg(q.delegate)}`));
    else if (q.decidedBy !== undefined) scans.push(scan(`decided_by = ${arg(q.decidedBy)}`));
    else if (q.requesters) {
      for (const r of new Set(q.requesters)) scans.push(scan(`requester = ${arg(r)}`));
    } else if (q.status && !delegationsOnly) {
      // An admin's status list, without an index on the status alone (it would be rewritten at
      // every status change): the requesters (a loose scan of grants_by_requester, one probe each),
      // each one's newest match, and the limit+1 requesters whose newest are newest: only they can
      // hold the page (those limit+1 newest are limit+1 matches; any other requester's are older
      // than all of them). Their scans are merged as above. The cost grows with the number of
      // requesters, not of grants.
      const sql = `WITH RECURSIVE r(requester) AS (
          (SELECT min(requester) FROM grants)
          UNION ALL
          SELECT (SELECT min(requester) FROM grants WHERE requester > r.requester) FROM r WHERE r.requester IS NOT NULL
        ), tops AS (
          SELECT r.requester, (SELECT seq FROM grants ${where("requester = r.requester")} ORDER BY seq DESC LIMIT 1) AS top
          FROM r WHERE r.requester IS NOT NULL
        ), chosen AS (
          SELECT requester FROM tops WHERE top IS NOT NULL ORDER BY top DESC LIMIT ${limit}
        )
        SELECT g.* FROM chosen CROSS JOIN LATERAL
          (SELECT ${GRANT_COLS} FROM grants ${where("requester = chosen.requester")} ORDER BY seq DESC LIMIT ${limit}) AS g
        ORDER BY g.seq DESC LIMIT ${limit}`;
      return this.pageFrom(q, await this.rows<GrantRow>(sql, args));
    } else scans.push(scan());
    // UNION (not ALL) drops a grant found by two scans (a delegation between the party and itself).
    const sql =
      scans.length === 1
        ? scans[0]!
        : `SELECT * FROM (${scans.join(" UNION ")}) AS s ORDER BY seq DESC LIMIT ${limit}`;
    return this.pageFrom(q, await this.rows<GrantRow>(sql, args));
  }

  /** The page of `q` from its limit+1 newest rows. */
  private pageFrom(q: GrantQuery, rows: GrantRow[]): GrantPage {
    return { items: rows.slice(0, q.limit).map(grantFromRow), hasMore: rows.length > q.limit };
  }

  async transition(id: string, t: Transition): Promise<StoredGrant | undefined> {
    const args: unknown[] = [];
    const arg = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    const sets = [`status = ${arg(t.to)}`, "version = version + 1"];
    if (t.decidedBy !== undefined) sets.push(`decided_by = ${arg(t.decidedBy)}`);
    if (t.decidedAt !== undefined) sets.push(`decided_at = ${arg(t.decidedAt)}`);
    if (t.expiresAt !== undefined) sets.push(`expires_at = ${arg(t.expiresAt)}`);
    if (t.usedAt !== undefined) sets.push(`used_at = ${arg(t.usedAt)}`);
    if (t.actingParty !== undefined) sets.push(`decided_act = ${arg(t.actingParty)}`);
    if (t.approvalProof !== undefined) sets.push(`approval_proof = ${arg(t.approvalProof)}`);
    // Both request edits in one expression: a column assigned twice keeps only the last.
    let request = "request";
    if (t.grantType !== undefined) {
      const v = arg(t.grantType);
      request = `jsonb_set(${request}, '{grant_type}', to_jsonb(${v}::text))`;
      sets.push(`grant_type = ${v}`);
    }
    if (t.duration === null) request = `(${request} - 'duration')`;
    else if (t.duration !== undefined) {
      request = `jsonb_set(${request}, '{duration}', to_jsonb(${arg(t.duration)}::bigint))`;
    }
    if (request !== "request") sets.push(`request = ${request}`);
    // Compare-and-set: the WHERE on the current status makes concurrent transitions exclusive,
    // across instances too (a second UPDATE waits for the first's row lock, then re-checks).
    if (t.seen && t.seen.grant.id !== id)
      throw new Error(`transition of ${id} given grant ${t.seen.grant.id} as seen`);
    // With the grant as the caller saw it: only that version of the row (the answer is still read back).
    const version = t.seen ? ` AND version = ${arg(t.seen.version)}` : "";
    const update = `UPDATE grants SET ${sets.join(", ")} WHERE id = ${arg(id)}${version} AND status = ANY(${arg([...t.from])}::text[]) RETURNING ${GRANT_COLS}`;
    // A delegation revoked appends its revocation event, and the change's notifications are
    // written, in the same statement: only when the transition applied, atomically with it.
    const ctes = [`g AS (${update})`];
    if (t.to === "revoked") {
      ctes.push(
        `e AS (INSERT INTO revocations (kind, subject, at) SELECT 'delegation', id, ${arg(t.at ?? t.decidedAt ?? 0)} FROM g WHERE type = 'delegation')`,
      );
    }
    if (t.outbox?.length) ctes.push(`o AS (${outboxInsert(t.outbox, arg, "g")})`);
    const sql = ctes.length > 1 ? `WITH ${ctes.join(", ")} SELECT * FROM g` : update;
    const [r] = await this.rows<GrantRow>(sql, args);
    return r ? grantFromRow(r) : undefined;
  }

  async expireDue(now: number): Promise<string[]> {
    const rows = await this.rows<{ id: string }>(
      "UPDATE grants SET status = 'expired', version = version + 1 WHERE status = 'approved' AND expires_at IS NOT NULL AND expires_at <= $1 RETURNING id",
      [now],
    );
    return rows.map((r) => r.id);
  }

  // --- notifications ---

  async addSubscription(sub: SubscriptionRecord): Promise<void> {
    await this.run(
      "INSERT INTO notify_subscriptions (id, owner, channel, target, secret, events, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
      [sub.id, sub.owner, sub.channel, sub.target, sub.secret ?? null, [...sub.events], sub.createdAt],
    );
  }

  async getSubscription(id: string): Promise<SubscriptionRecord | undefined> {
    const [r] = await this.rows<SubscriptionColumns>("SELECT * FROM notify_subscriptions WHERE id = $1", [
      id,
    ]);
    return r ? subscriptionFromRow(r) : undefined;
  }

  async subscriptionsOf(owners: readonly string[]): Promise<SubscriptionRecord[]> {
    const list = [...new Set(owners)];
    if (list.length === 0) return [];
    // Per owner at most 100 (each has at most MAX_SUBSCRIPTIONS), in the order of `owners`.
    const rows = await this.rows<SubscriptionColumns>(
      `SELECT s.* FROM unnest($1::text[]) WITH ORDINALITY AS o(owner, n)
       CROSS JOIN LATERAL (SELECT * FROM notify_subscriptions x WHERE x.owner = o.owner ORDER BY x.created_at, x.id COLLATE "C" LIMIT 100) s
       ORDER BY o.n, s.created_at, s.id COLLATE "C"`,
      [list],
    );
    return rows.map(subscriptionFromRow);
  }

  async removeSubscription(id: string, owner?: string): Promise<boolean> {
    // One statement: the subscription and its pending rows go together.
    const [r] = await this.rows<{ n: number }>(
      `WITH d AS (DELETE FROM notify_subscriptions WHERE id = $1 AND ($2::text IS NULL OR owner = $2) RETURNING id),
         p AS (DELETE FROM notify_outbox WHERE subscription_id IN (SELECT id FROM d) AND status = 'pending')
       SELECT count(*)::int AS n FROM d`,
      [id, owner ?? null],
    );
    return r?.n === 1;
  }

  async enqueueNotifications(rows: readonly NewNotification[]): Promise<number> {
    if (rows.length === 0) return 0;
    const args: unknown[] = [];
    const arg = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    return (await this.run(outboxInsert(rows, arg), args)).rowCount ?? 0;
  }

  async dueNotifications(
    nowMs: number,
    limit: number,
    skip: readonly string[] = [],
  ): Promise<NotificationRecord[]> {
    const rows = await this.rows<NotificationColumns>(
      `SELECT * FROM notify_outbox WHERE status = 'pending' AND due_at_ms <= $1 AND NOT (subscription_id = ANY($2::text[]))
       ORDER BY due_at_ms, id LIMIT $3`,
      [nowMs, [...skip], limit],
    );
    return rows.map(notificationOf);
  }

  async nextNotificationDue(): Promise<number | undefined> {
    const [r] = await this.rows<{ due: number | null }>(
      "SELECT MIN(due_at_ms) AS due FROM notify_outbox WHERE status = 'pending'",
    );
    return r?.due ?? undefined;
  }

  async recordAttempt(id: number, o: AttemptOutcome): Promise<boolean> {
    const r = o.delivered
      ? await this.run(
          "UPDATE notify_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = $1, last_error = NULL WHERE id = $2 AND status = 'pending'",
          [o.at, id],
        )
      : "dead" in o
        ? await this.run(
            "UPDATE notify_outbox SET status = 'dead', attempts = attempts + 1, last_error = $1 WHERE id = $2 AND status = 'pending'",
            [o.error, id],
          )
        : await this.run(
            "UPDATE notify_outbox SET attempts = attempts + 1, last_error = $1, due_at_ms = $2 WHERE id = $3 AND status = 'pending'",
            [o.error, o.retryAtMs, id],
          );
    return r.rowCount === 1;
  }

  async listNotifications(q: NotificationQuery): Promise<NotificationRecord[]> {
    const args: unknown[] = [];
    const arg = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    const where: string[] = [];
    if (q.status) where.push(`o.status = ${arg(q.status)}`);
    if (q.owner !== undefined) where.push(`s.owner = ${arg(q.owner)}`);
    const join = q.owner !== undefined ? "JOIN notify_subscriptions s ON s.id = o.subscription_id" : "";
    const rows = await this.rows<NotificationColumns>(
      `SELECT o.* FROM notify_outbox o ${join} ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY o.id DESC LIMIT ${arg(q.limit)}`,
      args,
    );
    return rows.map(notificationOf);
  }

  async retryNotification(id: number, nowMs: number): Promise<boolean> {
    const r = await this.run(
      "UPDATE notify_outbox SET status = 'pending', attempts = 0, due_at_ms = $1 WHERE id = $2 AND status = 'dead'",
      [nowMs, id],
    );
    return r.rowCount === 1;
  }

  async purgeNotifications(before: number): Promise<number> {
    let n = 0;
    for (const status of ["delivered", "dead"]) {
      const r = await this.run(
        `DELETE FROM notify_outbox WHERE id IN (
           SELECT id FROM notify_outbox WHERE status = $1 AND created_at < $2 ORDER BY id LIMIT 1000)`,
        [status, before],
      );
      n += r.rowCount ?? 0;
    }
    return n;
  }

  /**
   * A secret every instance shares, kept sealed with the key file under `name` (e.g. the VAPID key
   * pair): made by `make` on first use; of instances starting together, the first insert wins and
   * every one reads that.
   */
  async sealedSetting(name: string, make: () => Promise<string>): Promise<string> {
    const key = this.sealKey();
    const label = sealedSettingName(name);
    const read = async () =>
      (await this.rows<{ value: string }>("SELECT value FROM settings WHERE name = $1", [label]))[0]?.value;
    let sealed = await read();
    if (sealed === undefined) {
      await this.run("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", [
        label,
        sealSecret(key, label, await make()),
      ]);
      sealed = await read();
    }
    return openSecret(key, label, sealed!);
  }

  // --- passkeys, invites, web sessions ---

  async addPasskey(p: PasskeyRecord): Promise<boolean> {
    const r = await this.run(
      `INSERT INTO passkeys (credential_id, email, public_key, counter, transports, device_type, backed_up, created_at, last_used_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
      [
        p.credentialId,
        p.email,
        p.publicKey,
        p.counter,
        JSON.stringify(p.transports),
        p.deviceType,
        p.backedUp,
        p.createdAt,
        p.lastUsedAt ?? null,
      ],
    );
    return r.rowCount === 1;
  }

  async getPasskey(credentialId: string): Promise<PasskeyRecord | undefined> {
    const [r] = await this.rows<PasskeyColumns>("SELECT * FROM passkeys WHERE credential_id = $1", [
      credentialId,
    ]);
    return r ? passkeyFromRow(r) : undefined;
  }

  async listPasskeys(email: string): Promise<PasskeyRecord[]> {
    const rows = await this.rows<PasskeyColumns>(
      'SELECT * FROM passkeys WHERE email = $1 ORDER BY created_at, credential_id COLLATE "C"',
      [email],
    );
    return rows.map(passkeyFromRow);
  }

  async recordPasskeyUse(
    credentialId: string,
    u: { fromCounter: number; counter: number; backedUp: boolean; usedAt: number },
  ): Promise<boolean> {
    const r = await this.run(
      "UPDATE passkeys SET counter = $1, backed_up = $2, last_used_at = $3 WHERE credential_id = $4 AND counter = $5",
      [u.counter, u.backedUp, u.usedAt, credentialId, u.fromCounter],
    );
    return r.rowCount === 1;
  }

  async removePasskey(email: string, credentialId: string): Promise<boolean> {
    const r = await this.run("DELETE FROM passkeys WHERE credential_id = $1 AND email = $2", [
      credentialId,
      email,
    ]);
    return r.rowCount === 1;
  }

  async addInvite(i: InviteRecord): Promise<void> {
    await this.run(
      "INSERT INTO invites (id, email, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5)",
      [i.id, i.email, i.createdAt, i.expiresAt, i.usedAt ?? null],
    );
  }

  async getInvite(id: string, now: number): Promise<InviteRecord | undefined> {
    const [r] = await this.rows<InviteColumns>(
      "SELECT * FROM invites WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
      [id, now],
    );
    return r ? inviteOf(r) : undefined;
  }

  async redeemInvite(id: string, now: number): Promise<InviteRecord | undefined> {
    // One compare-and-set: of concurrent redemptions (on any instance) exactly one gets the row.
    const [r] = await this.rows<InviteColumns>(
      "UPDATE invites SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND expires_at > $1 RETURNING *",
      [now, id],
    );
    return r ? inviteOf(r) : undefined;
  }

  async addWebSession(w: WebSessionRecord): Promise<void> {
    await this.run("INSERT INTO web_sessions (id, email, created_at, expires_at) VALUES ($1, $2, $3, $4)", [
      w.id,
      w.email,
      w.createdAt,
      w.expiresAt,
    ]);
  }

  async getWebSession(id: string, now: number): Promise<WebSessionRecord | undefined> {
    const [r] = await this.rows<WebSessionColumns>(
      "SELECT id, email, created_at, expires_at FROM web_sessions WHERE id = $1 AND expires_at > $2",
      [id, now],
    );
    return r ? webSessionOf(r) : undefined;
  }

  async endWebSession(id: string): Promise<boolean> {
    return (await this.run("DELETE FROM web_sessions WHERE id = $1", [id])).rowCount === 1;
  }

  async endWebSessionsOf(email: string): Promise<number> {
    return (await this.run("DELETE FROM web_sessions WHERE email = $1", [email])).rowCount ?? 0;
  }

  async purgeExpiredWeb(now: number): Promise<void> {
    await this.run(
      "WITH s AS (DELETE FROM web_sessions WHERE expires_at <= $1) DELETE FROM invites WHERE expires_at <= $1",
      [now],
    );
  }

  /** The pool, for the migration tool's bulk copy (one transaction). */
  connect(): Promise<pg.PoolClient> {
    return this.pool.connect();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.gapTimer);
    for (const resolve of this.syncWaiters.values()) resolve();
    this.syncWaiters.clear();
    const l = this.listener;
    this.listener = undefined;
    this.listening = false;
    if (l) {
      l.removeAllListeners("end");
      await l.end().catch(() => undefined);
    }
    await this.pool.end();
  }
}
