import pg from "pg";
import { canonicalIdentity } from "../../../protocol/names.ts";
import type { Grant, GrantRequest } from "../../../protocol/types.ts";
import type {
  GrantPage,
  GrantQuery,
  NewGrant,
  NewUser,
  SigningKeyRecord,
  Store,
  StoredGrant,
  StoreLifecycle,
  Transition,
  UserRecord,
} from "../types.ts";
import type { PostgresTarget } from "./config.ts";
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

// Unix seconds and seq fit a double: read BIGINT as a number, for this store's connections only.
const types = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === 20 && format !== "binary") return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format);
  },
} as pg.CustomTypesConfig;

interface UserRow {
  email: string;
  kind: "human" | "agent";
  owner: string | null;
  admin: boolean;
  disabled: boolean;
  public_key: string | null;
  fingerprint: string | null;
  name: string | null;
  created_at: number;
  approvers: string[] | null;
}

interface GrantRow {
  seq: number;
  id: string;
  type: Grant["type"];
  status: Grant["status"];
  request: GrantRequest;
  decided_by: string | null;
  created_at: number;
  decided_at: number | null;
  expires_at: number | null;
  used_at: number | null;
  version: number;
  created_act: string | null;
  decided_act: string | null;
}

const GRANT_COLS =
  "seq, id, type, status, request, decided_by, created_at, decided_at, expires_at, used_at, version, created_act, decided_act";

function grantFromRow(r: GrantRow): StoredGrant {
  const grant: Grant = {
    id: r.id,
    type: r.type,
    request: r.request,
    status: r.status,
    created_at: r.created_at,
  };
  if (r.decided_by !== null) grant.decided_by = r.decided_by;
  if (r.decided_at !== null) grant.decided_at = r.decided_at;
  if (r.expires_at !== null) grant.expires_at = r.expires_at;
  if (r.used_at !== null) grant.used_at = r.used_at;
  const stored: StoredGrant = { grant, version: r.version, seq: r.seq };
  if (r.created_act !== null) stored.createdAct = r.created_act;
  if (r.decided_act !== null) stored.decidedAct = r.decided_act;
  return stored;
}

function userFromRow(r: UserRow): UserRecord {
  const u: UserRecord = {
    email: r.email,
    kind: r.kind,
    approvers: r.approvers ?? [],
    admin: r.admin,
    disabled: r.disabled,
    createdAt: r.created_at,
  };
  if (r.owner !== null) u.owner = r.owner;
  if (r.public_key !== null) u.publicKey = r.public_key;
  if (r.fingerprint !== null) u.fingerprint = r.fingerprint;
  if (r.name !== null) u.name = r.name;
  return u;
}

const USER_SELECT = `SELECT u.*, (SELECT array_agg(a.approver ORDER BY a.approver COLLATE "C") FROM approvers a WHERE a.subject = u.email) AS approvers FROM users u`;

function clientConfig(o: PostgresOptions): pg.ClientConfig {
  // pg lets the URL's fields override the config's: the password from the file goes into the URL
  // (only in memory here; the URL from the command line has none, config.ts checked).
  let connectionString = o.target.connectionString;
  if (o.target.password !== undefined) {
    const u = new URL(connectionString);
    u.password = encodeURIComponent(o.target.password);
    connectionString = u.toString();
  }
  const c: pg.ClientConfig = {
    connectionString,
    types,
    statement_timeout: o.statementTimeoutMs ?? 5000,
    // A connection left inside a transaction (a bug, a killed request) cannot hold locks for long.
    idle_in_transaction_session_timeout: 10_000,
    connectionTimeoutMillis: o.connectTimeoutMs ?? 5000,
    application_name: o.applicationName ?? "apes-idp",
    keepAlive: true,
  };
  return c;
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

  async setDisabled(name: string, disabled: boolean): Promise<boolean> {
    const email = canonicalIdentity(name);
    if (email === undefined) return false;
    const r = await this.run("UPDATE users SET disabled = $1 WHERE email = $2", [disabled, email]);
    return r.rowCount === 1;
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
    const rows = await this.rows<{
      kid: string;
      private_key: string;
      created_at: number;
      retired_at: number | null;
      max_exp: number;
    }>('SELECT * FROM signing_keys ORDER BY created_at, kid COLLATE "C"');
    if (rows.length === 0) return [];
    const key = this.sealKey();
    return rows.map((r) => {
      const k: SigningKeyRecord = {
        kid: r.kid,
        privateKey: openSecret(key, r.kid, r.private_key),
        createdAt: r.created_at,
        maxExp: r.max_exp,
      };
      if (r.retired_at !== null) k.retiredAt = r.retired_at;
      return k;
    });
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
      "WITH c AS (DELETE FROM challenges WHERE expires_at <= $1) DELETE FROM used_jtis WHERE expires_at <= $1",
      [now],
    );
  }

  // --- grants ---

  async insertGrant(n: NewGrant): Promise<StoredGrant> {
    const g = n.grant;
    const [r] = await this.rows<{ seq: number }>(
      `INSERT INTO grants (id, type, requester, status, grant_type, request, match_key, delegator, delegate, decided_by, created_at, decided_at, expires_at, used_at, created_act)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING seq`,
      [
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
      ],
    );
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
    const common: string[] = [];
    if (q.status) common.push(`status = ${arg(q.status)}`);
    if (q.type) common.push(`type = ${arg(q.type)}`);
    if (q.before) common.push(`seq < ${arg(q.before.seq)}`);
    const limit = arg(q.limit + 1);
    const scan = (scope?: string) => {
      const where = [...(scope ? [scope] : []), ...common];
      return `(SELECT ${GRANT_COLS} FROM grants ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq DESC LIMIT ${limit})`;
    };
    const scans: string[] = [];
    if (q.party !== undefined) {
      const p = arg(q.party);
      scans.push(scan(`delegator = ${p}`), scan(`delegate = ${p}`));
    } else if (q.delegator !== undefined) scans.push(scan(`delegator = ${arg(q.delegator)}`));
    else if (q.delegate !== undefined) scans.push(scan(`delegate = ${arg(q.delegate)}`));
    else if (q.requesters) {
      for (const r of new Set(q.requesters)) scans.push(scan(`requester = ${arg(r)}`));
    } else scans.push(scan());
    // UNION (not ALL) drops a grant found by two scans (a delegation between the party and itself).
    const sql =
      scans.length === 1
        ? scans[0]!
        : `SELECT * FROM (${scans.join(" UNION ")}) AS s ORDER BY seq DESC LIMIT ${limit}`;
    const rows = await this.rows<GrantRow>(sql, args);
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
    const [r] = await this.rows<GrantRow>(
      `UPDATE grants SET ${sets.join(", ")} WHERE id = ${arg(id)} AND status = ANY(${arg([...t.from])}::text[]) RETURNING ${GRANT_COLS}`,
      args,
    );
    return r ? grantFromRow(r) : undefined;
  }

  async expireDue(now: number): Promise<string[]> {
    const rows = await this.rows<{ id: string }>(
      "UPDATE grants SET status = 'expired', version = version + 1 WHERE status = 'approved' AND expires_at IS NOT NULL AND expires_at <= $1 RETURNING id",
      [now],
    );
    return rows.map((r) => r.id);
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
