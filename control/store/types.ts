import type {
  AgentStatus,
  Intent,
  IntentState,
  IntentSubmission,
  ResultState,
} from "../../protocol/troop.ts";

/**
 * The troop's persistence, database-neutral like idp/store/types.ts: every method returns a Promise,
 * times are Unix seconds passed in by the caller, state changes are conditional updates. SQLite
 * (sqlite.ts) and PostgreSQL (postgres.ts, several instances on one database); both pass
 * test/contract/troop-store/.
 */

/** An intent with the troop's bookkeeping. */
export interface StoredIntent {
  intent: Intent;
  state: IntentState;
  /** The nest's last detail text (result frames), bounded by protocol/troop.ts. */
  detail?: string;
  updated_at: number;
}

/** A nest the troop has seen authenticate, with who may command it (from its latest token). */
export interface NestRecord {
  id: string;
  /** The nest identity's owner (itself for a human) and approvers, as the IdP said in its token. */
  commanders: string[];
  /** For a nest that connected with a delegated token: whom it acts for (the token's sub). */
  actingFor?: string;
  version?: string;
  agents: AgentStatus[];
  lastSeen: number;
}

export type SubmitOutcome =
  | { outcome: "created"; stored: StoredIntent }
  | { outcome: "same"; stored: StoredIntent }
  | { outcome: "conflict"; stored: StoredIntent };

export interface IntentCursor {
  seq: number;
}

export type TransitionOutcome =
  | { ok: true; stored: StoredIntent; changed: boolean }
  | { ok: false; reason: "unknown" | "not_addressed" | "invalid_transition"; stored?: StoredIntent };

export interface TroopStore {
  /**
   * Stores a new intent with the next seq of its nest, or finds the one with this id: the same body
   * (`canonical`) is the same intent (a replay), a different one a conflict. Atomic.
   */
  submitIntent(
    submission: IntentSubmission,
    canonical: string,
    by: { sub: string; via?: string },
    now: number,
  ): Promise<SubmitOutcome>;
  getIntent(id: string): Promise<StoredIntent | undefined>;
  /** A nest's intents, newest first (seq below `before`), at most `limit`. */
  listIntents(nest: string, limit: number, before?: IntentCursor): Promise<StoredIntent[]>;
  /** Intents not yet acknowledged (queued or delivered), oldest first: what (re)delivery sends. */
  pendingFor(nest: string, limit: number): Promise<StoredIntent[]>;
  /**
   * Applies a nest's event (delivered, ack, or a result) to an intent addressed to `nest`, following
   * protocol/troop.ts nextIntentState; an event that is no change (a repeated ack) is ok and unchanged.
   */
  applyEvent(
    id: string,
    nest: string,
    event: "delivered" | "ack" | ResultState,
    detail: string | undefined,
    now: number,
  ): Promise<TransitionOutcome>;

  getNest(id: string): Promise<NestRecord | undefined>;
  /** Records a nest's identity facts from a verified token (commanders, acting-for) and last seen. */
  seenNest(id: string, commanders: string[], actingFor: string | undefined, now: number): Promise<void>;
  /** Records a nest's status report. */
  nestStatus(id: string, version: string, agents: AgentStatus[], now: number): Promise<void>;
  /** Nests the identity may command (named among their commanders) or is, by id. */
  nestsVisibleTo(identity: string): Promise<NestRecord[]>;

  /** What the store offers beyond the data (absent: nothing). */
  readonly lifecycle?: {
    /**
     * Calls onNest(nest) when an intent for that nest was queued by any instance, and
     * onNest(undefined) when some may have been missed (the notification connection dropped or
     * came back): re-read every nest this instance serves. Returns unsubscribe.
     */
    watchIntents?(onNest: (nest: string | undefined) => void): () => void;
  };

  close(): Promise<void>;
}
