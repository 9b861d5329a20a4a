import pg from "pg";
import {
  type AgentStatus,
  type Intent,
  type IntentState,
  type IntentSubmission,
  nextIntentState,
} from "../../protocol/troop.ts";
import {
  migratePostgres,
  type PgMigration,
  type PostgresTarget,
  pgClientConfig,
} from "../../server/postgres.ts";
import type {
  IntentCursor,
  NestRecord,
  StoredIntent,
  SubmitOutcome,
  TransitionOutcome,
  TroopStore,
} from "./types.ts";

/**
 * The troop's store on PostgreSQL, for several `apes troop serve` instances on one database (the
 * same rules as idp/store/postgres/: pooled `pg` connections, numbered migrations under an advisory
 * lock, state changes as conditional statements). Its tables carry a `troop_` prefix, so the troop
 * may share a database with the IdP.
 *
 * Push across instances: a trigger NOTIFYs `apes_troop_intent` with the nest's id when an intent is
 * queued; with `listen`, one dedicated connection LISTENs and tells watchIntents subscribers which
 * nest has new work (the instance holding that nest's socket sends it). While that connection is
 * down they hear `undefined` ("re-read every nest you serve") at once and every second until it is
 * back (it reconnects with backoff, then once more `undefined`), so an intent is never left waiting.
 */

export const TROOP_MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    what: "intents (ordered per nest by seq), per-nest seq counters, nests and their commanders; intent notifications",
    sql: `
  CREATE TABLE troop_intents (
    id TEXT PRIMARY KEY,
    nest TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body JSONB NOT NULL,
    canonical TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_via TEXT,
    state TEXT NOT NULL,
    detail TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (nest, seq)
  );
  CREATE INDEX troop_intents_pending ON troop_intents(nest, seq) WHERE state IN ('queued', 'delivered');
  -- The next seq of a nest: an upsert that locks the nest's row until commit, so of concurrent
  -- submissions (on any instance) each gets its own seq, in commit order.
  CREATE TABLE troop_nest_seq (
    nest TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
  );
  CREATE TABLE troop_nests (
    id TEXT PRIMARY KEY,
    commanders JSONB NOT NULL,
    acting_for TEXT,
    version TEXT,
    agents JSONB NOT NULL DEFAULT '[]',
    last_seen BIGINT NOT NULL
  );
  CREATE TABLE troop_nest_commanders (
    nest TEXT NOT NULL,
    commander TEXT NOT NULL,
    PRIMARY KEY (commander, nest)
  );
  CREATE INDEX troop_nest_commanders_by_nest ON troop_nest_commanders(nest);
  CREATE FUNCTION apes_troop_intent() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    PERFORM pg_notify('apes_troop_intent', NEW.nest);
    RETURN NULL;
  END $$;
  CREATE TRIGGER troop_intents_queued AFTER INSERT ON troop_intents
    FOR EACH ROW EXECUTE FUNCTION apes_troop_intent();
  `,
  },
];

const CHANNEL = "apes_troop_intent";
/** "apet": the troop schema among the database's advisory locks (the IdP's is "apes"). */
const MIGRATION_LOCK = 0x61706574;

export interface PostgresTroopOptions {
  target: PostgresTarget;
  maxConnections?: number;
  /** Open the notification connection (the server). */
  listen?: boolean;
  onListenerError?(e: Error): void;
}

interface IntentRow {
  body: Intent;
  state: string;
  detail: string | null;
  updated_at: number;
  nest: string;
}

function intentFromRow(r: IntentRow): StoredIntent {
  const s: StoredIntent = { intent: r.body, state: r.state as IntentState, updated_at: r.updated_at };
  if (r.detail !== null) s.detail = r.detail;
  return s;
}

interface NestRow {
  id: string;
  commanders: string[];
  acting_for: string | null;
  version: string | null;
  agents: AgentStatus[];
  last_seen: number;
}

function nestFromRow(r: NestRow): NestRecord {
  const n: NestRecord = { id: r.id, commanders: r.commanders, agents: r.agents, lastSeen: r.last_seen };
  if (r.acting_for !== null) n.actingFor = r.acting_for;
  if (r.version !== null) n.version = r.version;
  return n;
}

const INTENT_COLS = "body, state, detail, updated_at, nest";

export async function openPostgresTroopStore(o: PostgresTroopOptions): Promise<PostgresTroopStore> {
  const pool = new pg.Pool({
    ...pgClientConfig(o.target, { applicationName: "apes-troop" }),
    max: o.maxConnections ?? 10,
    idleTimeoutMillis: 30_000,
  });
  pool.on("error", () => {}); // an idle connection that breaks is dropped by the pool
  try {
    const c = await pool.connect();
    try {
      await migratePostgres(c, TROOP_MIGRATIONS, { table: "apes_troop_migrations", lock: MIGRATION_LOCK });
    } finally {
      c.release();
    }
  } catch (e) {
    await pool.end().catch(() => undefined);
    throw e;
  }
  const store = new PostgresTroopStore(pool, o);
  try {
    if (o.listen) await store.connectListener();
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  return store;
}

export class PostgresTroopStore implements TroopStore {
  private readonly pool: pg.Pool;
  private readonly options: PostgresTroopOptions;
  private closed = false;
  private listener: pg.Client | undefined;
  private readonly watchers = new Set<(nest: string | undefined) => void>();
  private reconnectTimer: NodeJS.Timeout | undefined;
  private gapTimer: NodeJS.Timeout | undefined;
  private backoffMs = 100;

  readonly lifecycle: NonNullable<TroopStore["lifecycle"]>;

  constructor(pool: pg.Pool, options: PostgresTroopOptions) {
    this.pool = pool;
    this.options = options;
    this.lifecycle = options.listen
      ? {
          watchIntents: (onNest) => {
            this.watchers.add(onNest);
            return () => this.watchers.delete(onNest);
          },
        }
      : {};
  }

  // --- notifications ---

  async connectListener(): Promise<void> {
    const c = new pg.Client({
      ...pgClientConfig(this.options.target, { applicationName: "apes-troop-listen" }),
      statement_timeout: 0, // it only waits
    });
    c.on("notification", (n) => {
      if (n.channel === CHANNEL && n.payload) for (const w of this.watchers) w(n.payload);
    });
    c.on("error", (e) => this.listenerLost(c, e));
    c.on("end", () => this.listenerLost(c, new Error("the notification connection closed")));
    this.listener = c;
    await c.connect();
    await c.query(`LISTEN ${CHANNEL}`);
    if (this.listener !== c || this.closed) {
      await c.end().catch(() => undefined);
      return;
    }
    this.backoffMs = 100;
    clearInterval(this.gapTimer);
    this.gapTimer = undefined;
    for (const w of this.watchers) w(undefined); // whatever was queued while no one listened
  }

  private listenerLost(c: pg.Client, e: Error): void {
    if (this.listener !== c) return;
    this.listener = undefined;
    c.removeAllListeners("end");
    c.end().catch(() => undefined);
    if (this.closed) return;
    this.options.onListenerError?.(e);
    for (const w of this.watchers) w(undefined);
    this.gapTimer ??= setInterval(() => {
      for (const w of this.watchers) w(undefined);
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
      this.connectListener().catch((e: Error) => {
        if (this.closed) return;
        const l = this.listener;
        if (l) this.listenerLost(l, e);
        else this.scheduleReconnect();
      });
    }, delay);
    this.reconnectTimer.unref();
  }

  /** Drops the notification connection as a network failure would (tests of the fallback). */
  dropListenerForTest(): void {
    const c = this.listener;
    if (c) this.listenerLost(c, new Error("dropped for a test"));
  }

  // --- intents ---

  async submitIntent(
    s: IntentSubmission,
    canonical: string,
    by: { sub: string; via?: string },
    now: number,
  ): Promise<SubmitOutcome> {
    const existing = async (): Promise<SubmitOutcome | undefined> => {
      const { rows } = await this.pool.query<IntentRow & { canonical: string }>(
        `SELECT ${INTENT_COLS}, canonical FROM troop_intents WHERE id = $1`,
        [s.id],
      );
      const r = rows[0];
      if (!r) return undefined;
      return { outcome: r.canonical === canonical ? "same" : "conflict", stored: intentFromRow(r) };
    };
    const found = await existing();
    if (found) return found;
    const c = await this.pool.connect();
    let created: StoredIntent | undefined;
    try {
      await c.query("BEGIN");
      try {
        const { rows } = await c.query<{ seq: number }>(
          `INSERT INTO troop_nest_seq (nest, seq) VALUES ($1, 1)
           ON CONFLICT (nest) DO UPDATE SET seq = troop_nest_seq.seq + 1 RETURNING seq`,
          [s.nest],
        );
        const seq = rows[0]!.seq;
        const intent: Intent = { ...s, seq, submitted_by: by.sub, created_at: now };
        if (by.via !== undefined) intent.submitted_via = by.via;
        // A concurrent submission of the same id (another instance) wins the insert: this one
        // rolls back (its seq unused) and answers with the stored one.
        const ins = await c.query(
          `INSERT INTO troop_intents (id, nest, seq, body, canonical, submitted_by, submitted_via, state, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $8) ON CONFLICT (id) DO NOTHING`,
          [s.id, s.nest, seq, JSON.stringify(intent), canonical, by.sub, by.via ?? null, now],
        );
        if (ins.rowCount === 1) {
          await c.query("COMMIT");
          created = { intent, state: "queued", updated_at: now };
        } else await c.query("ROLLBACK");
      } catch (e) {
        await c.query("ROLLBACK").catch(() => undefined);
        throw e;
      }
    } finally {
      c.release();
    }
    if (created) return { outcome: "created", stored: created };
    const again = await existing();
    if (!again) throw new Error("intent vanished after a concurrent insert");
    return again;
  }

  async getIntent(id: string): Promise<StoredIntent | undefined> {
    const { rows } = await this.pool.query<IntentRow>(
      `SELECT ${INTENT_COLS} FROM troop_intents WHERE id = $1`,
      [id],
    );
    return rows[0] ? intentFromRow(rows[0]) : undefined;
  }

  async listIntents(nest: string, limit: number, before?: IntentCursor): Promise<StoredIntent[]> {
    const { rows } = await this.pool.query<IntentRow>(
      `SELECT ${INTENT_COLS} FROM troop_intents WHERE nest = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3`,
      [nest, before?.seq ?? Number.MAX_SAFE_INTEGER, limit],
    );
    return rows.map(intentFromRow);
  }

  async pendingFor(nest: string, limit: number): Promise<StoredIntent[]> {
    const { rows } = await this.pool.query<IntentRow>(
      `SELECT ${INTENT_COLS} FROM troop_intents WHERE nest = $1 AND state IN ('queued', 'delivered') ORDER BY seq LIMIT $2`,
      [nest, limit],
    );
    return rows.map(intentFromRow);
  }

  async applyEvent(
    id: string,
    nest: string,
    event: "delivered" | "ack" | "running" | "done" | "failed",
    detail: string | undefined,
    now: number,
  ): Promise<TransitionOutcome> {
    // Read, decide (protocol/troop.ts), compare-and-set on the state read; a lost race re-reads
    // (another instance applied an event meanwhile) and decides again.
    for (let attempt = 0; attempt < 5; attempt++) {
      const { rows } = await this.pool.query<IntentRow>(
        `SELECT ${INTENT_COLS} FROM troop_intents WHERE id = $1`,
        [id],
      );
      const r = rows[0];
      if (!r) return { ok: false, reason: "unknown" };
      const stored = intentFromRow(r);
      if (r.nest !== nest) return { ok: false, reason: "not_addressed", stored };
      const next = nextIntentState(stored.state, event);
      if (next === undefined) {
        // A repeat of what already happened (at-least-once delivery, a resent ack) is no error.
        const repeat =
          (event === "delivered" && stored.state !== "queued") ||
          (event === "ack" && stored.state !== "queued" && stored.state !== "delivered") ||
          event === stored.state;
        return repeat
          ? { ok: true, stored, changed: false }
          : { ok: false, reason: "invalid_transition", stored };
      }
      const u = await this.pool.query<IntentRow>(
        `UPDATE troop_intents SET state = $1, detail = COALESCE($2, detail), updated_at = $3
         WHERE id = $4 AND state = $5 RETURNING ${INTENT_COLS}`,
        [next, detail ?? null, now, id, stored.state],
      );
      if (u.rows[0]) return { ok: true, stored: intentFromRow(u.rows[0]), changed: true };
    }
    const stored = await this.getIntent(id);
    return { ok: false, reason: "invalid_transition", ...(stored ? { stored } : {}) };
  }

  // --- nests ---

  async getNest(id: string): Promise<NestRecord | undefined> {
    const { rows } = await this.pool.query<NestRow>("SELECT * FROM troop_nests WHERE id = $1", [id]);
    return rows[0] ? nestFromRow(rows[0]) : undefined;
  }

  async seenNest(
    id: string,
    commanders: string[],
    actingFor: string | undefined,
    now: number,
  ): Promise<void> {
    // One statement: the nest and its commander index change together.
    await this.pool.query(
      `WITH n AS (
         INSERT INTO troop_nests (id, commanders, acting_for, last_seen) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET commanders = excluded.commanders, acting_for = excluded.acting_for, last_seen = excluded.last_seen
         RETURNING id),
       d AS (DELETE FROM troop_nest_commanders WHERE nest = $1 AND commander <> ALL($5::text[]))
       INSERT INTO troop_nest_commanders (nest, commander) SELECT $1, c FROM unnest($5::text[]) AS c
       ON CONFLICT DO NOTHING`,
      [id, JSON.stringify(commanders), actingFor ?? null, now, [...new Set(commanders)]],
    );
  }

  async nestStatus(id: string, version: string, agents: AgentStatus[], now: number): Promise<void> {
    await this.pool.query("UPDATE troop_nests SET version = $1, agents = $2, last_seen = $3 WHERE id = $4", [
      version,
      JSON.stringify(agents),
      now,
      id,
    ]);
  }

  async nestsVisibleTo(identity: string): Promise<NestRecord[]> {
    const { rows } = await this.pool.query<NestRow>(
      `SELECT * FROM troop_nests WHERE id = $1 OR id IN (SELECT nest FROM troop_nest_commanders WHERE commander = $1)
       ORDER BY id COLLATE "C" LIMIT 1000`,
      [identity],
    );
    return rows.map(nestFromRow);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.gapTimer);
    const l = this.listener;
    this.listener = undefined;
    if (l) {
      l.removeAllListeners("end");
      await l.end().catch(() => undefined);
    }
    await this.pool.end();
  }
}
