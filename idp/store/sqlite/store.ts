import type { DatabaseSync, StatementSync } from "node:sqlite";
import { canonicalIdentity } from "../../../protocol/names.ts";
import type { GrantRequest } from "../../../protocol/types.ts";
import { openPrivateSqlite, privateWalFiles } from "../../../server/sqlite.ts";
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
import { transitioned } from "../transitioned.ts";
import {
  type AttemptOutcome,
  type AuthCodeRecord,
  type ChangeKind,
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
  type NotifyEvent,
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
import { startCheckpointer } from "./checkpointer.ts";
import { migrate } from "./migrations.ts";

/**
 * node:sqlite implementation of the Store. WAL journal with synchronous=NORMAL: a commit survives a
 * killed process (only an OS crash can lose the last transactions); a busy timeout lets the offline
 * admin commands write while the server runs. Statements are prepared once and cached.
 *
 * node:sqlite is synchronous: every method does its work when called and returns a settled
 * promise, so a caller's writes land in the database in the order it made them, and a conditional
 * update is decided before any other code runs.
 */

export const DB_FILE = "idp.sqlite";

/**
 * Writes and commits made through any SqliteStore of this process (each also counts its own): what
 * another connection here may have committed since a data_version was read (see changeMarker).
 */
let processWrites = 0;

/*
 * The rows as node:sqlite gives them: booleans as 0/1, lists as JSON text (a subscription's events
 * as a comma list), a grant's request as JSON text; decoded here, mapped in ../rows.ts.
 */
type UserRow = UserColumns<number>;
type GrantRow = GrantColumns<string>;
type PasskeyRow = PasskeyColumns<string, number>;
type ClientRow = ClientColumns<string>;
type SubscriptionRow = SubscriptionColumns<string>;

/** The row's request is JSON text: parsed here, into objects of this grant's own. */
function grantFromRow(r: GrantRow): StoredGrant {
  return storedGrantOf(r, JSON.parse(r.request) as GrantRequest);
}

function passkeyFromRow(r: PasskeyRow): PasskeyRecord {
  return passkeyOf(r, { transports: JSON.parse(r.transports) as string[], backedUp: r.backed_up === 1 });
}

function clientFromRow(r: ClientRow): ClientRecord {
  return clientOf(r, JSON.parse(r.redirect_uris) as string[]);
}

function subscriptionFromRow(r: SubscriptionRow): SubscriptionRecord {
  return subscriptionOf(r, r.events.split(",").filter(Boolean) as NotifyEvent[]);
}

function userFromRow(r: UserRow, approvers: string[]): UserRecord {
  return userOf(r, { admin: r.admin === 1, disabled: r.disabled === 1, approvers });
}

/** A cell to Atomics.wait on: a sleep shorter than a millisecond (beginWaitingFinely). */
const PAUSE = new Int32Array(new SharedArrayBuffer(4));

/** Seconds a family revoked before its first token is kept (see revokeRefreshFamily). */
const FAMILY_GRACE_S = 600;

export interface SqliteOptions {
  busyTimeoutMs?: number;
  /**
   * Group commit (see SqliteStore): for the server, which answers no request before
   * lifecycle.flush() resolves. Without it every call commits before it returns.
   */
  groupCommit?: boolean;
  /**
   * Several processes write this database (`serve --workers`): a batch commits as soon as someone
   * waits for it (flush(): a request about to be answered) instead of at the end of the event-loop
   * turn, so the write lock, which every other process waits for, is not held through the rest of
   * the turn's work (parsing, signing, other requests). Group commit still joins what was written
   * meanwhile.
   */
  commitOnFlush?: boolean;
  /**
   * Checkpoint the WAL every `intervalMs` from a worker thread (checkpointer.ts) instead of inside
   * commits: a checkpoint syncs the files, and once a second is enough. Stopped by close().
   */
  checkpointer?: { intervalMs: number; onError(e: Error): void };
}

/** Opens (creating 0700/0600 as needed) and migrates the database in `dataDir`. */
export function openSqliteStore(dataDir: string, options: SqliteOptions = {}): SqliteStore {
  const { db, path: file } = openPrivateSqlite(dataDir, DB_FILE, options.busyTimeoutMs);
  db.exec("PRAGMA foreign_keys = ON");
  // A page cache and memory map large enough for the hot indexes: random uuid lookups on a big
  // table otherwise become a read syscall each.
  db.exec("PRAGMA cache_size = -65536");
  db.exec("PRAGMA mmap_size = 268435456");
  if (options.checkpointer) db.exec("PRAGMA wal_autocheckpoint = 0");
  try {
    migrate(db);
    processWrites++; // a migration is a commit the other connections of this process must see
    privateWalFiles(file);
    return new SqliteStore(db, file, options);
  } catch (e) {
    db.close();
    throw e;
  }
}

export class SqliteStore implements Store {
  private readonly db: DatabaseSync;
  private readonly stmts = new Map<string, StatementSync>();
  private stopCheckpointer: (() => Promise<void>) | undefined;
  private ownWrites = 0;
  /** data_version as read in this synchronous run (undefined: read it), and the others' writes then. */
  private marker: number | undefined;
  private markerOthers = 0;

  readonly lifecycle: StoreLifecycle = {
    flush: () => {
      const b = this.batch;
      if (b && this.commitOnFlush) this.commitBatch();
      return b?.promise ?? Promise.resolve();
    },
    changeMarker: (kind) => (kind === undefined ? this.changeMarker() : this.kindMarker(kind)),
    beginRequest: () => {
      // While this connection's batch holds the write lock no other can commit: a value read
      // inside the batch stays true until it commits.
      if (this.batch === undefined || this.markerBatch !== this.batch) this.forgetMarker();
    },
  };

  /**
   * PRAGMA data_version, read once per request (beginRequest) instead of at every cached lookup: a
   * change another process committed before a request was read counts for it, as with a read at
   * every lookup. Outside requests (housekeeping, the admin commands) it is kept until the next
   * setImmediate at the latest, and the loop does not wait for I/O meanwhile. A commit by another
   * connection of this process can come at any time: it is counted (processWrites) and the value
   * read again.
   */
  private changeMarker(): number {
    const others = processWrites - this.ownWrites;
    if (this.marker === undefined || others !== this.markerOthers) {
      this.marker = (this.q("PRAGMA data_version").get() as { data_version: number }).data_version;
      this.markerOthers = others;
      this.markerBatch = this.batch;
      // Referenced: the loop does not block in a poll for I/O while the value is kept.
      this.markerTimer ??= setImmediate(this.forgetMarker);
    }
    return this.marker;
  }

  /** The group-commit batch open when the marker was read (see beginRequest). */
  private markerBatch: object | undefined;

  /** change_counters as read at data_version `countersAt` (migration 11). */
  private counters = new Map<string, number>();
  private countersAt: number | undefined;

  /**
   * The change counter of `kind`, read again only when data_version moved: one small read after
   * another process's commit, instead of every cached user, subscription and key read again.
   * Read after data_version, so it includes at least every change that one does.
   */
  private kindMarker(kind: ChangeKind): number {
    const version = this.changeMarker();
    if (this.countersAt !== version) {
      const rows = this.q("SELECT kind, n FROM change_counters").all() as { kind: string; n: number }[];
      this.counters = new Map(rows.map((r) => [r.kind, r.n]));
      this.countersAt = version;
    }
    const n = this.counters.get(kind);
    if (n === undefined) throw new Error(`no change counter for ${kind}`);
    return n;
  }

  private markerTimer: NodeJS.Immediate | undefined;
  private readonly forgetMarker = () => {
    this.marker = undefined;
    if (this.markerTimer) clearImmediate(this.markerTimer);
    this.markerTimer = undefined;
  };

  /** Counts a write or commit of this connection (see processWrites). */
  private wrote(): void {
    processWrites++;
    this.ownWrites++;
  }

  constructor(db: DatabaseSync, file: string, options: SqliteOptions) {
    this.db = db;
    this.groupCommit = options.groupCommit === true;
    this.commitOnFlush = options.commitOnFlush === true;
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    if (options.checkpointer) {
      const { intervalMs, onError } = options.checkpointer;
      this.stopCheckpointer = startCheckpointer(file, intervalMs, () => this.checkpoint(), onError);
    }
  }

  /** Cached prepared statement. */
  private q(sql: string): StatementSync {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  /**
   * Runs fn atomically: a savepoint inside an open transaction or group-commit batch. fn is
   * synchronous, so no other caller's write can land inside it (and be rolled back with it).
   */
  private atomically<T>(fn: () => T): T {
    if (this.groupCommit) this.openBatch();
    if (this.db.isTransaction) {
      this.db.exec("SAVEPOINT tx");
      try {
        const r = fn();
        this.db.exec("RELEASE tx");
        return r;
      } catch (e) {
        this.db.exec("ROLLBACK TO tx");
        this.db.exec("RELEASE tx");
        throw e;
      }
    }
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const r = fn();
      this.db.exec("COMMIT");
      this.wrote();
      return r;
    } catch (e) {
      this.db.exec("ROLLBACK");
      throw e;
    }
  }

  // --- group commit ---
  // The server handles requests on one thread; with group commit, every write made while handling
  // the requests of one event-loop turn goes into one transaction, committed in setImmediate. The
  // server sends no response before lifecycle.flush() resolves, so nothing uncommitted is ever
  // acknowledged (a SIGKILL loses only unacknowledged work). Conditional updates stay atomic: one
  // thread, one connection, each statement runs to its end when called, and reads see the batch's
  // own writes.
  private readonly groupCommit: boolean;
  private readonly commitOnFlush: boolean;
  private readonly busyTimeoutMs: number;
  private batch: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | undefined;

  private openBatch(): void {
    if (this.batch) return;
    if (this.commitOnFlush) this.beginWaitingFinely();
    else this.db.exec("BEGIN IMMEDIATE");
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // observed by flush() callers
    this.batch = { promise, resolve, reject };
    setImmediate(() => this.commitBatch());
  }

  /**
   * BEGIN IMMEDIATE for a write lock other processes hold briefly (commitOnFlush): SQLite's busy
   * handler sleeps 1, 2, 5, 10 ms..., far longer than such a hold, and this thread does nothing
   * meanwhile; here it tries again every 50 us, up to the same busy timeout.
   */
  private beginWaitingFinely(): void {
    this.db.exec("PRAGMA busy_timeout = 0");
    try {
      const deadline = performance.now() + this.busyTimeoutMs;
      for (;;) {
        try {
          this.db.exec("BEGIN IMMEDIATE");
          return;
        } catch (e) {
          if ((e as { errcode?: number }).errcode !== 5 || performance.now() > deadline) throw e;
          Atomics.wait(PAUSE, 0, 0, 0.05);
        }
      }
    } finally {
      this.db.exec(`PRAGMA busy_timeout = ${this.busyTimeoutMs}`);
    }
  }

  private commitBatch(): void {
    const b = this.batch;
    if (!b) return;
    this.batch = undefined;
    try {
      this.db.exec("COMMIT");
      this.wrote();
      b.resolve();
    } catch (e) {
      try {
        this.db.exec("ROLLBACK");
      } catch {
        // already rolled back
      }
      b.reject(e);
    }
  }

  /** A cached statement that writes: joins (or opens) the group-commit batch. */
  private wq(sql: string): StatementSync {
    if (this.groupCommit && !this.batch) this.openBatch();
    this.wrote(); // outside a transaction the statement commits when it runs
    return this.q(sql);
  }

  // --- users ---

  async addUser(u: NewUser): Promise<void> {
    // Users are stored under their normalised identity only (the callers normalise and explain).
    for (const name of [u.email, ...(u.owner ? [u.owner] : []), ...(u.approvers ?? [])]) {
      if (canonicalIdentity(name) !== name)
        throw new Error(`not a normalised identity: ${JSON.stringify(name)}`);
    }
    this.atomically(() => {
      this.wq(
        "INSERT INTO users (email, kind, owner, admin, disabled, public_key, fingerprint, name, created_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
      ).run(
        u.email,
        u.kind,
        u.owner ?? null,
        u.admin ? 1 : 0,
        u.publicKey ?? null,
        u.fingerprint ?? null,
        u.name ?? null,
        u.createdAt,
      );
      for (const a of new Set(u.approvers ?? [])) {
        this.wq("INSERT INTO approvers (subject, approver) VALUES (?, ?)").run(u.email, a);
      }
    });
  }

  /** Every lookup by identity goes through its normal form: look-alike spellings find the same user, refused ones none. */
  async getUser(name: string): Promise<UserRecord | undefined> {
    const email = canonicalIdentity(name);
    if (email === undefined) return undefined;
    const r = this.q("SELECT * FROM users WHERE email = ?").get(email) as UserRow | undefined;
    if (!r) return undefined;
    const approvers = (
      this.q("SELECT approver FROM approvers WHERE subject = ?").all(email) as { approver: string }[]
    ).map((a) => a.approver);
    return userFromRow(r, approvers);
  }

  async listUsers(): Promise<UserRecord[]> {
    const rows = this.q("SELECT * FROM users ORDER BY email").all() as unknown as UserRow[];
    const approvers = new Map<string, string[]>();
    for (const a of this.q("SELECT subject, approver FROM approvers ORDER BY approver").all() as {
      subject: string;
      approver: string;
    }[]) {
      const list = approvers.get(a.subject) ?? [];
      list.push(a.approver);
      approvers.set(a.subject, list);
    }
    return rows.map((r) => userFromRow(r, approvers.get(r.email) ?? []));
  }

  async setDisabled(name: string, disabled: boolean, at: number): Promise<boolean> {
    const email = canonicalIdentity(name);
    if (email === undefined) return false;
    return this.atomically(() => {
      const changed =
        this.wq("UPDATE users SET disabled = ? WHERE email = ?").run(disabled ? 1 : 0, email).changes === 1;
      if (changed && disabled) this.appendRevocation("user", email, at);
      return changed;
    });
  }

  private appendRevocation(kind: RevocationEvent["kind"], subject: string, at: number): void {
    this.wq("INSERT INTO revocations (kind, subject, at) VALUES (?, ?, ?)").run(kind, subject, at);
  }

  async revocationsAfter(after: number, limit: number): Promise<RevocationEvent[]> {
    return (
      this.q("SELECT seq, kind, subject, at FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?").all(
        after,
        limit,
      ) as unknown as RevocationEvent[]
    ).map((r) => ({ seq: r.seq, kind: r.kind, subject: r.subject, at: r.at }));
  }

  async lastRevocation(): Promise<number> {
    return (this.q("SELECT COALESCE(MAX(seq), 0) AS seq FROM revocations").get() as { seq: number }).seq;
  }

  async subordinatesOf(name: string): Promise<string[]> {
    const email = canonicalIdentity(name);
    if (email === undefined) return [];
    const owned = this.q("SELECT email FROM users WHERE owner = ?").all(email) as { email: string }[];
    const approved = this.q("SELECT subject FROM approvers WHERE approver = ?").all(email) as {
      subject: string;
    }[];
    return [...new Set([...owned.map((r) => r.email), ...approved.map((r) => r.subject)])];
  }

  // --- signing keys ---

  async listSigningKeys(): Promise<SigningKeyRecord[]> {
    const rows = this.q(
      "SELECT * FROM signing_keys ORDER BY created_at, kid",
    ).all() as unknown as SigningKeyColumns[];
    return rows.map((r) => signingKeyOf(r, r.private_key));
  }

  async addSigningKey(k: SigningKeyRecord): Promise<void> {
    this.wq(
      "INSERT INTO signing_keys (kid, private_key, created_at, retired_at, max_exp) VALUES (?, ?, ?, ?, ?)",
    ).run(k.kid, k.privateKey, k.createdAt, k.retiredAt ?? null, k.maxExp);
  }

  async retireSigningKeys(exceptKid: string, now: number): Promise<void> {
    this.wq("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL AND kid <> ?").run(
      now,
      exceptKid,
    );
  }

  async raiseKeyMaxExp(kid: string, maxExp: number): Promise<void> {
    this.wq("UPDATE signing_keys SET max_exp = ? WHERE kid = ? AND max_exp < ?").run(maxExp, kid, maxExp);
  }

  // --- single-use values ---

  async spendChallenge(nonce: string, subject: string, expiresAt: number): Promise<boolean> {
    // The challenges table holds spent nonces only (challenges are sealed, idp/challenges.ts); one
    // conditional insert decides which of concurrent uses of a challenge wins.
    return (
      this.wq("INSERT OR IGNORE INTO challenges (challenge, subject, expires_at) VALUES (?, ?, ?)").run(
        nonce,
        subject,
        expiresAt,
      ).changes === 1
    );
  }

  async useJti(jti: string, expiresAt: number): Promise<boolean> {
    return (
      this.wq("INSERT OR IGNORE INTO used_jtis (jti, expires_at) VALUES (?, ?)").run(jti, expiresAt)
        .changes === 1
    );
  }

  async purgeExpired(now: number): Promise<void> {
    this.wq("DELETE FROM challenges WHERE expires_at <= ?").run(now);
    this.wq("DELETE FROM used_jtis WHERE expires_at <= ?").run(now);
    this.wq("DELETE FROM revocations WHERE at <= ?").run(now - REVOCATION_RETENTION_S);
    this.wq("DELETE FROM oauth_codes WHERE expires_at <= ?").run(now);
    this.wq("DELETE FROM device_codes WHERE expires_at <= ?").run(now);
    this.wq("DELETE FROM refresh_tokens WHERE expires_at <= ?").run(now);
    // A family expires with its last token (its expires_at is the latest of theirs), never before.
    this.wq("DELETE FROM refresh_families WHERE expires_at <= ?").run(now);
  }

  // --- OAuth ---

  async addClient(c: ClientRecord): Promise<void> {
    this.wq("INSERT INTO oauth_clients (id, redirect_uris, created_at) VALUES (?, ?, ?)").run(
      c.id,
      JSON.stringify(c.redirectUris),
      c.createdAt,
    );
  }

  async getClient(id: string): Promise<ClientRecord | undefined> {
    const r = this.q("SELECT * FROM oauth_clients WHERE id = ?").get(id) as ClientRow | undefined;
    return r ? clientFromRow(r) : undefined;
  }

  async listClients(): Promise<ClientRecord[]> {
    return (this.q("SELECT * FROM oauth_clients ORDER BY id").all() as unknown as ClientRow[]).map(
      clientFromRow,
    );
  }

  async removeClient(id: string): Promise<boolean> {
    return this.wq("DELETE FROM oauth_clients WHERE id = ?").run(id).changes === 1;
  }

  async insertAuthCode(c: AuthCodeRecord): Promise<void> {
    this.wq(
      `INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, nonce, sub, family_id, created_at, expires_at, used_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
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
    );
  }

  async spendAuthCode(codeHash: string, now: number): Promise<AuthCodeRecord | undefined> {
    const r = this.wq(
      "UPDATE oauth_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING *",
    ).get(now, codeHash, now) as AuthCodeColumns | undefined;
    return r ? authCodeOf(r) : undefined;
  }

  async getAuthCode(codeHash: string): Promise<AuthCodeRecord | undefined> {
    const r = this.q("SELECT * FROM oauth_codes WHERE code_hash = ?").get(codeHash) as
      | AuthCodeColumns
      | undefined;
    return r ? authCodeOf(r) : undefined;
  }

  async insertRefreshToken(t: RefreshTokenRecord): Promise<void> {
    this.atomically(() => {
      this.wq(
        `INSERT INTO refresh_families (family_id, client_id, sub, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (family_id) DO UPDATE SET expires_at = MAX(refresh_families.expires_at, excluded.expires_at)`,
      ).run(t.familyId, t.clientId, t.sub, t.createdAt, t.expiresAt);
      this.wq(
        `INSERT INTO refresh_tokens (token_hash, family_id, client_id, sub, act, acting_party, delegation_grant, created_at, expires_at, used_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
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
      );
    });
  }

  async spendRefreshToken(tokenHash: string, now: number): Promise<RefreshTokenRecord | undefined> {
    // One compare-and-set: unspent, unexpired, and its family not revoked.
    const r = this.wq(
      `UPDATE refresh_tokens SET used_at = ?
       WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?
         AND NOT EXISTS (SELECT 1 FROM refresh_families f WHERE f.family_id = refresh_tokens.family_id AND f.revoked_at IS NOT NULL)
       RETURNING *`,
    ).get(now, tokenHash, now) as RefreshTokenColumns | undefined;
    return r ? refreshTokenOf(r) : undefined;
  }

  async getRefreshToken(
    tokenHash: string,
  ): Promise<(RefreshTokenRecord & { familyRevoked: boolean }) | undefined> {
    const r = this.q(
      `SELECT t.*, f.revoked_at AS family_revoked_at FROM refresh_tokens t
       LEFT JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = ?`,
    ).get(tokenHash) as (RefreshTokenColumns & { family_revoked_at: number | null }) | undefined;
    return r ? { ...refreshTokenOf(r), familyRevoked: r.family_revoked_at !== null } : undefined;
  }

  async revokeRefreshFamily(familyId: string, now: number): Promise<boolean> {
    // A family not stored yet (a code replayed while its first exchange is under way) is stored
    // revoked, for FAMILY_GRACE_S (longer than a code lives), so the token that exchange is about to
    // store is dead on arrival.
    const r = this.wq(
      `INSERT INTO refresh_families (family_id, client_id, sub, created_at, expires_at, revoked_at) VALUES (?, '', '', ?, ?, ?)
       ON CONFLICT (family_id) DO UPDATE SET revoked_at = excluded.revoked_at WHERE refresh_families.revoked_at IS NULL`,
    ).run(familyId, now, now + FAMILY_GRACE_S, now);
    return r.changes === 1;
  }

  async insertDeviceCode(d: DeviceCodeRecord): Promise<void> {
    this.wq(
      `INSERT INTO device_codes (device_hash, user_code, client_id, status, sub, poll_interval, last_poll_at, created_at, expires_at, decided_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
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
    );
  }

  async getDeviceCode(deviceHash: string): Promise<DeviceCodeRecord | undefined> {
    const r = this.q("SELECT * FROM device_codes WHERE device_hash = ?").get(deviceHash) as
      | DeviceCodeColumns
      | undefined;
    return r ? deviceCodeOf(r) : undefined;
  }

  async getDeviceCodeByUserCode(userCode: string, now: number): Promise<DeviceCodeRecord | undefined> {
    const r = this.q("SELECT * FROM device_codes WHERE user_code = ? AND expires_at > ?").get(
      userCode,
      now,
    ) as DeviceCodeColumns | undefined;
    return r ? deviceCodeOf(r) : undefined;
  }

  async decideDeviceCode(
    userCode: string,
    to: "approved" | "denied",
    sub: string,
    now: number,
  ): Promise<boolean> {
    return (
      this.wq(
        "UPDATE device_codes SET status = ?, sub = ?, decided_at = ? WHERE user_code = ? AND status = 'pending' AND expires_at > ?",
      ).run(to, sub, now, userCode, now).changes === 1
    );
  }

  async recordDevicePoll(deviceHash: string, now: number, interval: number): Promise<void> {
    this.wq("UPDATE device_codes SET last_poll_at = ?, poll_interval = ? WHERE device_hash = ?").run(
      now,
      interval,
      deviceHash,
    );
  }

  async spendDeviceCode(deviceHash: string, now: number): Promise<DeviceCodeRecord | undefined> {
    const r = this.wq(
      "UPDATE device_codes SET status = 'used' WHERE device_hash = ? AND status = 'approved' AND expires_at > ? RETURNING *",
    ).get(deviceHash, now) as DeviceCodeColumns | undefined;
    return r ? deviceCodeOf(r) : undefined;
  }

  // --- grants ---

  async insertGrant(n: NewGrant): Promise<StoredGrant> {
    if (n.outbox?.length) {
      const outbox = n.outbox;
      return this.atomically(() => {
        const stored = this.insertGrantRow(n);
        this.insertOutboxRows(outbox);
        return stored;
      });
    }
    return this.insertGrantRow(n);
  }

  private insertGrantRow(n: NewGrant): StoredGrant {
    const g = n.grant;
    const request = JSON.stringify(g.request);
    const r = this.wq(
      `INSERT INTO grants (id, type, requester, status, grant_type, request, match_key, delegator, delegate, decided_by, created_at, decided_at, expires_at, used_at, created_act)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      g.id,
      g.type,
      g.request.requester,
      g.status,
      g.request.grant_type,
      request,
      n.matchKey ?? null,
      g.type === "delegation" ? (g.request.delegator ?? null) : null,
      g.type === "delegation" ? (g.request.delegate ?? null) : null,
      g.decided_by ?? null,
      g.created_at,
      g.decided_at ?? null,
      g.expires_at ?? null,
      g.used_at ?? null,
      n.actingParty ?? null,
    );
    // The grant as a read would return it, in objects of its own (not the caller's).
    return grantFromRow({
      seq: Number(r.lastInsertRowid),
      id: g.id,
      type: g.type,
      status: g.status,
      request,
      decided_by: g.decided_by ?? null,
      created_at: g.created_at,
      decided_at: g.decided_at ?? null,
      expires_at: g.expires_at ?? null,
      used_at: g.used_at ?? null,
      version: 1,
      created_act: n.actingParty ?? null,
      decided_act: null,
      approval_proof: null,
    });
  }

  async getGrant(id: string): Promise<StoredGrant | undefined> {
    const r = this.q(`SELECT ${GRANT_COLS} FROM grants WHERE id = ?`).get(id) as GrantRow | undefined;
    return r ? grantFromRow(r) : undefined;
  }

  async findReusable(requester: string, matchKey: string, now: number): Promise<StoredGrant | undefined> {
    const r = this.q(
      `SELECT ${GRANT_COLS} FROM grants
       WHERE requester = ? AND match_key = ? AND status = 'approved' AND grant_type <> 'once'
         AND (expires_at IS NULL OR expires_at > ?)
       ORDER BY seq DESC LIMIT 1`,
    ).get(requester, matchKey, now) as GrantRow | undefined;
    return r ? grantFromRow(r) : undefined;
  }

  async queryGrants(q: GrantQuery): Promise<GrantPage> {
    // One index range scan per scope (each bounded by limit+1), merged here: the cost depends on
    // the page size and the number of scopes, not on how many grants are stored.
    if (q.requesters && q.requesters.length === 0) return { items: [], hasMore: false };
    const scopes: { column: string; value: string }[] = [];
    if (q.party !== undefined) {
      scopes.push({ column: "delegator", value: q.party }, { column: "delegate", value: q.party });
    } else if (q.delegator !== undefined) scopes.push({ column: "delegator", value: q.delegator });
    else if (q.delegate !== undefined) scopes.push({ column: "delegate", value: q.delegate });
    else if (q.decidedBy !== undefined) scopes.push({ column: "decided_by", value: q.decidedBy });
    else if (q.requesters) for (const r of q.requesters) scopes.push({ column: "requester", value: r });
    // Delegations alone: grants_delegations serves every status (see pageOf's type filter).
    else if (q.status && q.type !== "delegation") return this.snapshot(() => this.statusPage(q));
    return scopes.length > 1 ? this.snapshot(() => this.pageOf(q, scopes)) : this.pageOf(q, scopes);
  }

  /** The page of `q` over these scopes (none: every grant); see queryGrants. */
  private pageOf(q: GrantQuery, scopes: readonly { column: string; value: string }[]): GrantPage {
    const scan = (cols: string, scope: { column: string; value: string } | undefined) => {
      const where: string[] = [];
      const args: (string | number)[] = [];
      if (scope) {
        where.push(`${scope.column} = ?`);
        args.push(scope.value);
      }
      if (q.status) {
        where.push("status = ?");
        args.push(q.status);
      }
      // Delegations as a literal: a bound parameter does not imply grants_delegations' WHERE.
      if (q.type === "delegation") where.push("type = 'delegation'");
      else if (q.type) {
        where.push("type = ?");
        args.push(q.type);
      }
      if (q.before) {
        where.push("seq < ?");
        args.push(q.before.seq);
      }
      const sql = `SELECT ${cols} FROM grants ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
        ORDER BY seq DESC LIMIT ?`;
      args.push(q.limit + 1);
      return this.q(sql).all(...args);
    };
    if (scopes.length <= 1) {
      const rows = scan(GRANT_COLS, scopes[0]) as unknown as GrantRow[];
      return { items: rows.slice(0, q.limit).map(grantFromRow), hasMore: rows.length > q.limit };
    }
    // Several scopes: their seqs only (from the index, no row read when it covers the filters),
    // merged, then the page's rows.
    const seqs: number[] = [];
    for (const s of scopes) for (const r of scan("seq", s) as { seq: number }[]) seqs.push(r.seq);
    seqs.sort((a, b) => b - a);
    const unique = seqs.filter((x, i) => i === 0 || x !== seqs[i - 1]);
    return this.rowsOf(unique.slice(0, q.limit), unique.length > q.limit);
  }

  /** The grants of these seqs, newest first. */
  private rowsOf(seqs: readonly number[], hasMore: boolean): GrantPage {
    const rows = this.q(
      `SELECT ${GRANT_COLS} FROM grants WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY seq DESC`,
    ).all(JSON.stringify(seqs)) as unknown as GrantRow[];
    return { items: rows.map(grantFromRow), hasMore };
  }

  /**
   * An admin's status-filtered list over every requester, without an index on the status alone
   * (it would be rewritten at every status change). The requesters come from a skip scan of
   * grants_by_requester (one seek each), each with its newest match (one seek in
   * grants_by_requester_status); only the limit+1 whose newest are newest can hold the page (those
   * are limit+1 matches, and every other requester's are older). Their matches are then merged one
   * seek at a time, newest first: about limit+1 seeks. The cost grows with the number of
   * requesters, not of grants.
   */
  private statusPage(q: GrantQuery): GrantPage {
    const filters = q.type ? "status = ? AND type = ?" : "status = ?";
    const filterArgs: string[] = q.type ? [q.status!, q.type] : [q.status!];
    const olderMatch = this.q(
      `SELECT seq FROM grants WHERE requester = ? AND ${filters} AND seq < ? ORDER BY seq DESC LIMIT 1`,
    );
    const frontier = this.q(
      `WITH RECURSIVE r(requester) AS (
         SELECT min(requester) FROM grants
         UNION ALL
         SELECT (SELECT min(requester) FROM grants WHERE requester > r.requester) FROM r WHERE r.requester IS NOT NULL
       ), tops AS MATERIALIZED (
         SELECT requester, (SELECT seq FROM grants WHERE requester = r.requester AND ${filters}
           ${q.before ? "AND seq < ?" : ""} ORDER BY seq DESC LIMIT 1) AS seq
         FROM r WHERE requester IS NOT NULL
       )
       SELECT requester, seq FROM tops WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT ?`,
    ).all(...filterArgs, ...(q.before ? [q.before.seq] : []), q.limit + 1) as {
      requester: string;
      seq: number;
    }[];
    // frontier: each requester's newest match not yet taken, newest first.
    const seqs: number[] = [];
    while (seqs.length <= q.limit && frontier.length > 0) {
      const head = frontier.shift()!;
      seqs.push(head.seq);
      const next = olderMatch.get(head.requester, ...filterArgs, head.seq) as { seq: number } | undefined;
      if (!next) continue;
      let i = 0;
      while (i < frontier.length && frontier[i]!.seq > next.seq) i++;
      frontier.splice(i, 0, { requester: head.requester, seq: next.seq });
    }
    return this.rowsOf(seqs.slice(0, q.limit), seqs.length > q.limit);
  }

  /** Several reads as one snapshot (WAL: one read transaction); inside a batch, its transaction. */
  private snapshot<T>(fn: () => T): T {
    if (this.db.isTransaction) return fn();
    this.db.exec("BEGIN");
    try {
      return fn();
    } finally {
      this.db.exec("COMMIT");
    }
  }

  async transition(id: string, t: Transition): Promise<StoredGrant | undefined> {
    const sets = ["status = ?", "version = version + 1"];
    const args: (string | number | null)[] = [t.to];
    if (t.decidedBy !== undefined) {
      sets.push("decided_by = ?");
      args.push(t.decidedBy);
    }
    if (t.decidedAt !== undefined) {
      sets.push("decided_at = ?");
      args.push(t.decidedAt);
    }
    if (t.expiresAt !== undefined) {
      sets.push("expires_at = ?");
      args.push(t.expiresAt);
    }
    if (t.usedAt !== undefined) {
      sets.push("used_at = ?");
      args.push(t.usedAt);
    }
    if (t.actingParty !== undefined) {
      sets.push("decided_act = ?");
      args.push(t.actingParty);
    }
    if (t.approvalProof !== undefined) {
      sets.push("approval_proof = ?");
      args.push(t.approvalProof);
    }
    // Both request edits go into one expression: a column assigned twice keeps only the last.
    let request = "request";
    const requestArgs: (string | number)[] = [];
    if (t.grantType !== undefined) {
      request = `json_set(${request}, '$.grant_type', ?)`;
      requestArgs.push(t.grantType);
      sets.push("grant_type = ?");
      args.push(t.grantType);
    }
    if (t.duration === null) request = `json_remove(${request}, '$.duration')`;
    else if (t.duration !== undefined) {
      request = `json_set(${request}, '$.duration', ?)`;
      requestArgs.push(t.duration);
    }
    if (request !== "request") {
      sets.push(`request = ${request}`);
      args.push(...requestArgs);
    }
    const placeholders = t.from.map(() => "?").join(", ");
    const seen = t.seen;
    if (seen && seen.grant.id !== id)
      throw new Error(`transition of ${id} given grant ${seen.grant.id} as seen`);
    const update = () => {
      // Compare-and-set: the WHERE on the current status makes concurrent transitions exclusive.
      if (!seen) {
        const r = this.wq(
          `UPDATE grants SET ${sets.join(", ")} WHERE id = ? AND status IN (${placeholders}) RETURNING ${GRANT_COLS}`,
        ).get(...args, id, ...t.from) as GrantRow | undefined;
        return r ? grantFromRow(r) : undefined;
      }
      // On the row at the version seen, the answer is that grant with the change applied.
      const r = this.wq(
        `UPDATE grants SET ${sets.join(", ")} WHERE id = ? AND version = ? AND status IN (${placeholders})`,
      ).run(...args, id, seen.version, ...t.from);
      return r.changes === 0 ? undefined : transitioned(seen, t);
    };
    const apply = () => {
      const g = update();
      if (!g) return undefined;
      if (t.to === "revoked" && g.grant.type === "delegation") {
        this.appendRevocation("delegation", g.grant.id, t.at ?? t.decidedAt ?? 0);
      }
      // Notifications of the change: written in the same transaction, only when the transition applied.
      if (t.outbox?.length) this.insertOutboxRows(t.outbox);
      return g;
    };
    // One statement is atomic on its own: the savepoint only when more rows may follow it.
    return t.outbox?.length || t.to === "revoked" ? this.atomically(apply) : apply();
  }

  async expireDue(now: number): Promise<string[]> {
    const rows = this.wq(
      "UPDATE grants SET status = 'expired', version = version + 1 WHERE status = 'approved' AND expires_at IS NOT NULL AND expires_at <= ? RETURNING id",
    ).all(now) as { id: string }[];
    return rows.map((r) => r.id);
  }

  // --- notifications ---

  private insertOutboxRows(rows: readonly NewNotification[]): number {
    let n = 0;
    for (const r of rows) {
      n += this.wq(
        `INSERT OR IGNORE INTO notify_outbox (key, subscription_id, grant_id, event, payload, status, attempts, due_at_ms, created_at)
         VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)`,
      ).run(r.key, r.subscriptionId, r.grantId ?? null, r.event, r.payload, r.createdAt * 1000, r.createdAt)
        .changes as number;
    }
    return n;
  }

  async addSubscription(s: SubscriptionRecord): Promise<void> {
    this.wq(
      "INSERT INTO notify_subscriptions (id, owner, channel, target, secret, events, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ).run(s.id, s.owner, s.channel, s.target, s.secret ?? null, s.events.join(","), s.createdAt);
  }

  async getSubscription(id: string): Promise<SubscriptionRecord | undefined> {
    const r = this.q("SELECT * FROM notify_subscriptions WHERE id = ?").get(id) as
      | SubscriptionRow
      | undefined;
    return r ? subscriptionFromRow(r) : undefined;
  }

  async subscriptionsOf(owners: readonly string[]): Promise<SubscriptionRecord[]> {
    const out: SubscriptionRecord[] = [];
    for (const owner of new Set(owners)) {
      const rows = this.q(
        "SELECT * FROM notify_subscriptions WHERE owner = ? ORDER BY created_at, id LIMIT 100",
      ).all(owner) as unknown as SubscriptionRow[];
      out.push(...rows.map(subscriptionFromRow));
    }
    return out;
  }

  async removeSubscription(id: string, owner?: string): Promise<boolean> {
    return this.atomically(() => {
      const gone =
        owner === undefined
          ? this.wq("DELETE FROM notify_subscriptions WHERE id = ?").run(id)
          : this.wq("DELETE FROM notify_subscriptions WHERE id = ? AND owner = ?").run(id, owner);
      if (gone.changes !== 1) return false;
      this.wq("DELETE FROM notify_outbox WHERE subscription_id = ? AND status = 'pending'").run(id);
      return true;
    });
  }

  async enqueueNotifications(rows: readonly NewNotification[]): Promise<number> {
    return this.atomically(() => this.insertOutboxRows(rows));
  }

  async dueNotifications(
    nowMs: number,
    limit: number,
    skip: readonly string[] = [],
  ): Promise<NotificationRecord[]> {
    const notIn = skip.length ? `AND subscription_id NOT IN (${skip.map(() => "?").join(", ")})` : "";
    const rows = this.q(
      `SELECT * FROM notify_outbox WHERE status = 'pending' AND due_at_ms <= ? ${notIn} ORDER BY due_at_ms, id LIMIT ?`,
    ).all(nowMs, ...skip, limit) as unknown as NotificationColumns[];
    return rows.map(notificationOf);
  }

  async nextNotificationDue(): Promise<number | undefined> {
    const r = this.q("SELECT MIN(due_at_ms) AS due FROM notify_outbox WHERE status = 'pending'").get() as {
      due: number | null;
    };
    return r.due ?? undefined;
  }

  async recordAttempt(id: number, o: AttemptOutcome): Promise<boolean> {
    const r = o.delivered
      ? this.wq(
          "UPDATE notify_outbox SET status = 'delivered', attempts = attempts + 1, delivered_at = ?, last_error = NULL WHERE id = ? AND status = 'pending'",
        ).run(o.at, id)
      : "dead" in o
        ? this.wq(
            "UPDATE notify_outbox SET status = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ? AND status = 'pending'",
          ).run(o.error, id)
        : this.wq(
            "UPDATE notify_outbox SET attempts = attempts + 1, last_error = ?, due_at_ms = ? WHERE id = ? AND status = 'pending'",
          ).run(o.error, o.retryAtMs, id);
    return r.changes === 1;
  }

  async listNotifications(q: NotificationQuery): Promise<NotificationRecord[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (q.status) {
      where.push("o.status = ?");
      args.push(q.status);
    }
    if (q.owner !== undefined) {
      where.push("s.owner = ?");
      args.push(q.owner);
    }
    const join = q.owner !== undefined ? "JOIN notify_subscriptions s ON s.id = o.subscription_id" : "";
    args.push(q.limit);
    const rows = this.q(
      `SELECT o.* FROM notify_outbox o ${join} ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY o.id DESC LIMIT ?`,
    ).all(...args) as unknown as NotificationColumns[];
    return rows.map(notificationOf);
  }

  async retryNotification(id: number, nowMs: number): Promise<boolean> {
    return (
      this.wq(
        "UPDATE notify_outbox SET status = 'pending', attempts = 0, due_at_ms = ? WHERE id = ? AND status = 'dead'",
      ).run(nowMs, id).changes === 1
    );
  }

  async purgeNotifications(before: number): Promise<number> {
    let n = 0;
    for (const status of ["delivered", "dead"]) {
      n += this.wq(
        `DELETE FROM notify_outbox WHERE id IN (
           SELECT id FROM notify_outbox WHERE status = ? AND created_at < ? ORDER BY id LIMIT 1000)`,
      ).run(status, before).changes as number;
    }
    return n;
  }

  // --- passkeys, invites, web sessions ---

  async addPasskey(p: PasskeyRecord): Promise<boolean> {
    return (
      this.wq(
        `INSERT OR IGNORE INTO passkeys (credential_id, email, public_key, counter, transports, device_type, backed_up, created_at, last_used_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        p.credentialId,
        p.email,
        p.publicKey,
        p.counter,
        JSON.stringify(p.transports),
        p.deviceType,
        p.backedUp ? 1 : 0,
        p.createdAt,
        p.lastUsedAt ?? null,
      ).changes === 1
    );
  }

  async getPasskey(credentialId: string): Promise<PasskeyRecord | undefined> {
    const r = this.q("SELECT * FROM passkeys WHERE credential_id = ?").get(credentialId) as
      | PasskeyRow
      | undefined;
    return r ? passkeyFromRow(r) : undefined;
  }

  async listPasskeys(email: string): Promise<PasskeyRecord[]> {
    const rows = this.q("SELECT * FROM passkeys WHERE email = ? ORDER BY created_at, credential_id").all(
      email,
    ) as unknown as PasskeyRow[];
    return rows.map(passkeyFromRow);
  }

  async recordPasskeyUse(
    credentialId: string,
    u: { fromCounter: number; counter: number; backedUp: boolean; usedAt: number },
  ): Promise<boolean> {
    return (
      this.wq(
        "UPDATE passkeys SET counter = ?, backed_up = ?, last_used_at = ? WHERE credential_id = ? AND counter = ?",
      ).run(u.counter, u.backedUp ? 1 : 0, u.usedAt, credentialId, u.fromCounter).changes === 1
    );
  }

  async removePasskey(email: string, credentialId: string): Promise<boolean> {
    return (
      this.wq("DELETE FROM passkeys WHERE credential_id = ? AND email = ?").run(credentialId, email)
        .changes === 1
    );
  }

  async addInvite(i: InviteRecord): Promise<void> {
    this.wq("INSERT INTO invites (id, email, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?)").run(
      i.id,
      i.email,
      i.createdAt,
      i.expiresAt,
      i.usedAt ?? null,
    );
  }

  async getInvite(id: string, now: number): Promise<InviteRecord | undefined> {
    const r = this.q("SELECT * FROM invites WHERE id = ? AND used_at IS NULL AND expires_at > ?").get(
      id,
      now,
    ) as InviteColumns | undefined;
    return r ? inviteOf(r) : undefined;
  }

  async redeemInvite(id: string, now: number): Promise<InviteRecord | undefined> {
    // One compare-and-set: of concurrent redemptions exactly one sees its row returned.
    const r = this.wq(
      "UPDATE invites SET used_at = ? WHERE id = ? AND used_at IS NULL AND expires_at > ? RETURNING *",
    ).get(now, id, now) as InviteColumns | undefined;
    return r ? inviteOf(r) : undefined;
  }

  async addWebSession(w: WebSessionRecord): Promise<void> {
    this.wq("INSERT INTO web_sessions (id, email, created_at, expires_at) VALUES (?, ?, ?, ?)").run(
      w.id,
      w.email,
      w.createdAt,
      w.expiresAt,
    );
  }

  async getWebSession(id: string, now: number): Promise<WebSessionRecord | undefined> {
    const r = this.q(
      "SELECT id, email, created_at, expires_at FROM web_sessions WHERE id = ? AND expires_at > ?",
    ).get(id, now) as WebSessionColumns | undefined;
    return r ? webSessionOf(r) : undefined;
  }

  async endWebSession(id: string): Promise<boolean> {
    return this.wq("DELETE FROM web_sessions WHERE id = ?").run(id).changes === 1;
  }

  async endWebSessionsOf(email: string): Promise<number> {
    return Number(this.wq("DELETE FROM web_sessions WHERE email = ?").run(email).changes);
  }

  async purgeExpiredWeb(now: number): Promise<void> {
    this.wq("DELETE FROM web_sessions WHERE expires_at <= ?").run(now);
    this.wq("DELETE FROM invites WHERE expires_at <= ?").run(now);
  }

  /** A passive WAL checkpoint on this connection (the worker's fallback). */
  checkpoint(): void {
    if (!this.db.isTransaction) this.db.exec("PRAGMA wal_checkpoint(PASSIVE)");
  }

  async close(): Promise<void> {
    const stop = this.stopCheckpointer;
    this.stopCheckpointer = undefined;
    await stop?.();
    this.commitBatch();
    this.stmts.clear();
    if (this.db.isOpen) this.db.close();
  }
}
