import type { DatabaseSync, StatementSync } from "node:sqlite";
import {
  type AgentStatus,
  type Intent,
  type IntentState,
  type IntentSubmission,
  nextIntentState,
} from "../../protocol/troop.ts";
import { type Migration, migrate, openPrivateSqlite, privateWalFiles } from "../../server/sqlite.ts";
import type {
  IntentCursor,
  NestRecord,
  StoredIntent,
  SubmitOutcome,
  TransitionOutcome,
  TroopStore,
} from "./types.ts";

/** The troop's SQLite store (node:sqlite): one file in the data dir, 0600, WAL, numbered migrations. */

export const DB_FILE = "troop.sqlite";

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    what: "intents (ordered per nest by seq) and nests",
    sql: `
  CREATE TABLE intents (
    id TEXT PRIMARY KEY,
    nest TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    canonical TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_via TEXT,
    state TEXT NOT NULL,
    detail TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (nest, seq)
  );
  CREATE INDEX intents_pending ON intents(nest, seq) WHERE state IN ('queued', 'delivered');
  CREATE TABLE nests (
    id TEXT PRIMARY KEY,
    commanders TEXT NOT NULL,
    acting_for TEXT,
    version TEXT,
    agents TEXT NOT NULL DEFAULT '[]',
    last_seen INTEGER NOT NULL
  );
  CREATE TABLE nest_commanders (
    nest TEXT NOT NULL,
    commander TEXT NOT NULL,
    PRIMARY KEY (commander, nest)
  );
  `,
  },
];

interface IntentRow {
  body: string;
  state: string;
  detail: string | null;
  updated_at: number;
  nest: string;
}

function intentFromRow(r: IntentRow): StoredIntent {
  const s: StoredIntent = {
    intent: JSON.parse(r.body) as Intent,
    state: r.state as IntentState,
    updated_at: r.updated_at,
  };
  if (r.detail !== null) s.detail = r.detail;
  return s;
}

interface NestRow {
  id: string;
  commanders: string;
  acting_for: string | null;
  version: string | null;
  agents: string;
  last_seen: number;
}

function nestFromRow(r: NestRow): NestRecord {
  const n: NestRecord = {
    id: r.id,
    commanders: JSON.parse(r.commanders) as string[],
    agents: JSON.parse(r.agents) as AgentStatus[],
    lastSeen: r.last_seen,
  };
  if (r.acting_for !== null) n.actingFor = r.acting_for;
  if (r.version !== null) n.version = r.version;
  return n;
}

export function openTroopStore(dataDir: string): TroopStore {
  const { db, path } = openPrivateSqlite(dataDir, DB_FILE);
  try {
    migrate(db, MIGRATIONS);
    privateWalFiles(path);
  } catch (e) {
    db.close();
    throw e;
  }
  return new SqliteTroopStore(db);
}

const INTENT_COLS = "body, state, detail, updated_at, nest";

class SqliteTroopStore implements TroopStore {
  private readonly db: DatabaseSync;
  private readonly stmts = new Map<string, StatementSync>();
  constructor(db: DatabaseSync) {
    this.db = db;
  }

  private q(sql: string): StatementSync {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  private tx<T>(fn: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const r = fn();
      this.db.exec("COMMIT");
      return r;
    } catch (e) {
      this.db.exec("ROLLBACK");
      throw e;
    }
  }

  async submitIntent(
    s: IntentSubmission,
    canonical: string,
    by: { sub: string; via?: string },
    now: number,
  ): Promise<SubmitOutcome> {
    return this.tx(() => {
      const existing = this.q(`SELECT ${INTENT_COLS}, canonical FROM intents WHERE id = ?`).get(s.id) as
        | (IntentRow & { canonical: string })
        | undefined;
      if (existing) {
        return {
          outcome: existing.canonical === canonical ? "same" : "conflict",
          stored: intentFromRow(existing),
        };
      }
      const { seq } = this.q("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM intents WHERE nest = ?").get(
        s.nest,
      ) as { seq: number };
      const intent: Intent = { ...s, seq, submitted_by: by.sub, created_at: now };
      if (by.via !== undefined) intent.submitted_via = by.via;
      this.q(
        "INSERT INTO intents (id, nest, seq, body, canonical, submitted_by, submitted_via, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
      ).run(s.id, s.nest, seq, JSON.stringify(intent), canonical, by.sub, by.via ?? null, now, now);
      return { outcome: "created", stored: { intent, state: "queued", updated_at: now } };
    });
  }

  async getIntent(id: string): Promise<StoredIntent | undefined> {
    const r = this.q(`SELECT ${INTENT_COLS} FROM intents WHERE id = ?`).get(id) as IntentRow | undefined;
    return r ? intentFromRow(r) : undefined;
  }

  async listIntents(nest: string, limit: number, before?: IntentCursor): Promise<StoredIntent[]> {
    const rows = this.q(
      `SELECT ${INTENT_COLS} FROM intents WHERE nest = ? AND seq < ? ORDER BY seq DESC LIMIT ?`,
    ).all(nest, before?.seq ?? Number.MAX_SAFE_INTEGER, limit) as unknown as IntentRow[];
    return rows.map(intentFromRow);
  }

  async pendingFor(nest: string, limit: number): Promise<StoredIntent[]> {
    const rows = this.q(
      `SELECT ${INTENT_COLS} FROM intents WHERE nest = ? AND state IN ('queued', 'delivered') ORDER BY seq LIMIT ?`,
    ).all(nest, limit) as unknown as IntentRow[];
    return rows.map(intentFromRow);
  }

  async applyEvent(
    id: string,
    nest: string,
    event: "delivered" | "ack" | "running" | "done" | "failed",
    detail: string | undefined,
    now: number,
  ): Promise<TransitionOutcome> {
    return this.tx((): TransitionOutcome => {
      const r = this.q(`SELECT ${INTENT_COLS} FROM intents WHERE id = ?`).get(id) as IntentRow | undefined;
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
      // Compare-and-set on the state read above.
      const updated = this.q(
        `UPDATE intents SET state = ?, detail = COALESCE(?, detail), updated_at = ? WHERE id = ? AND state = ? RETURNING ${INTENT_COLS}`,
      ).get(next, detail ?? null, now, id, stored.state) as IntentRow | undefined;
      if (!updated) return { ok: false, reason: "invalid_transition", stored };
      return { ok: true, stored: intentFromRow(updated), changed: true };
    });
  }

  async getNest(id: string): Promise<NestRecord | undefined> {
    const r = this.q("SELECT * FROM nests WHERE id = ?").get(id) as NestRow | undefined;
    return r ? nestFromRow(r) : undefined;
  }

  async seenNest(
    id: string,
    commanders: string[],
    actingFor: string | undefined,
    now: number,
  ): Promise<void> {
    this.tx(() => {
      this.q(
        `INSERT INTO nests (id, commanders, acting_for, last_seen) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET commanders = excluded.commanders, acting_for = excluded.acting_for, last_seen = excluded.last_seen`,
      ).run(id, JSON.stringify(commanders), actingFor ?? null, now);
      this.q("DELETE FROM nest_commanders WHERE nest = ?").run(id);
      for (const c of new Set(commanders)) {
        this.q("INSERT INTO nest_commanders (nest, commander) VALUES (?, ?)").run(id, c);
      }
    });
  }

  async nestStatus(id: string, version: string, agents: AgentStatus[], now: number): Promise<void> {
    this.q("UPDATE nests SET version = ?, agents = ?, last_seen = ? WHERE id = ?").run(
      version,
      JSON.stringify(agents),
      now,
      id,
    );
  }

  async nestsVisibleTo(identity: string): Promise<NestRecord[]> {
    const rows = this.q(
      `SELECT * FROM nests WHERE id = ? OR id IN (SELECT nest FROM nest_commanders WHERE commander = ?) ORDER BY id LIMIT 1000`,
    ).all(identity, identity) as unknown as NestRow[];
    return rows.map(nestFromRow);
  }

  async close(): Promise<void> {
    if (this.db.isOpen) this.db.close();
  }
}
