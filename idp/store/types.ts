import type { Grant, GrantCategory, GrantStatus } from "../../protocol/types.ts";

/**
 * The IdP's persistence, database-neutral: every method returns a Promise, and nothing here names a
 * database. Implementations: idp/store/sqlite/ and idp/store/postgres/; every implementation
 * passes the contract suite in test/contract/store/. Times are Unix seconds and always passed in by
 * the caller (no hidden clock). Every method is an indexed lookup or a bounded scan: per-request cost
 * must not grow with the number of stored grants. State changes are conditional updates (one
 * compare-and-set on the current status, or one insert that fails on a duplicate), never
 * read-then-write, so concurrent callers (in this process or another) cannot both win.
 */

export type UserKind = "human" | "agent";

export interface UserRecord {
  email: string;
  kind: UserKind;
  /** The human who owns an agent (required for agents). */
  owner?: string;
  /** Humans who may decide this user's grants (besides an agent's owner). */
  approvers: string[];
  admin: boolean;
  disabled: boolean;
  /** `ssh-ed25519 AAAA... comment` line, for challenge-response login and client assertions. */
  publicKey?: string;
  fingerprint?: string;
  name?: string;
  createdAt: number;
}

export interface NewUser {
  email: string;
  kind: UserKind;
  owner?: string;
  approvers?: string[];
  admin?: boolean;
  publicKey?: string;
  fingerprint?: string;
  name?: string;
  createdAt: number;
}

export interface SigningKeyRecord {
  kid: string;
  /** PKCS#8 PEM. */
  privateKey: string;
  createdAt: number;
  retiredAt?: number;
  /** The latest `exp` of any token signed with this key (a retired key is published until then). */
  maxExp: number;
}

/** A grant plus the store's bookkeeping (an ETag version, bumped on every change). */
export interface StoredGrant {
  grant: Grant;
  version: number;
  /** Position in the newest-first order; with created_at it forms the pagination cursor. */
  seq: number;
  /** The acting party (act.sub) when the grant was created with a delegated token. */
  createdAct?: string;
  /** The acting party of the last decision made with a delegated token (absent: the decider itself). */
  decidedAct?: string;
}

export interface NewGrant {
  grant: Grant;
  /** Key of (host, audience, run_as, command) for reuse of approved timed/always grants. */
  matchKey?: string;
  /** Created with a delegated token: who acted (act.sub) for the requester. */
  actingParty?: string;
}

/** A conditional state change: applied only when the grant's status is one of `from`. */
export interface Transition {
  from: readonly GrantStatus[];
  to: GrantStatus;
  decidedBy?: string;
  decidedAt?: number;
  expiresAt?: number | null;
  usedAt?: number;
  /** A decision by a principal: who acted with a delegated token (act.sub), null for its own token. */
  actingParty?: string | null;
  /** Replaces request.grant_type / request.duration (an approver's override). */
  grantType?: Grant["request"]["grant_type"];
  duration?: number | null;
}

export interface PageCursor {
  createdAt: number;
  seq: number;
}

export interface GrantQuery {
  /** Only grants whose requester is one of these (undefined = any requester: admins). */
  requesters?: readonly string[];
  delegator?: string;
  delegate?: string;
  /** Delegations where this identity is the delegator or the delegate. */
  party?: string;
  status?: GrantStatus;
  type?: GrantCategory;
  limit: number;
  /** Return only grants strictly older than this position. */
  before?: PageCursor;
}

export interface GrantPage {
  items: StoredGrant[];
  hasMore: boolean;
}

export interface Store {
  // users (looked up by their normalised identity, protocol/names.ts; stored only in that form)
  /** Adds a user with its approvers atomically; rejects a duplicate or a name not in normal form. */
  addUser(user: NewUser): Promise<void>;
  getUser(email: string): Promise<UserRecord | undefined>;
  /** Every user, ordered by email. */
  listUsers(): Promise<UserRecord[]>;
  /** false when there is no such user. */
  setDisabled(email: string, disabled: boolean): Promise<boolean>;
  /** Users this human may decide for: agents it owns and users naming it as an approver. */
  subordinatesOf(email: string): Promise<string[]>;

  // signing keys
  /** Every key, oldest first (created_at, then kid). */
  listSigningKeys(): Promise<SigningKeyRecord[]>;
  addSigningKey(key: SigningKeyRecord): Promise<void>;
  /** Retires every active key except `keepKid` (rotation). */
  retireSigningKeys(exceptKid: string, now: number): Promise<void>;
  /** Raises the key's max_exp to `maxExp`; never lowers it. */
  raiseKeyMaxExp(kid: string, maxExp: number): Promise<void>;

  // single-use values (challenges, client-assertion jti)
  /**
   * Records the nonce of a used login challenge (idp/challenges.ts) until it expires; false when it
   * was already spent. Challenges themselves are stateless: only spent ones are stored.
   */
  spendChallenge(nonce: string, subject: string, expiresAt: number): Promise<boolean>;
  /** Records a jti; false when it was already used (replay). */
  useJti(jti: string, expiresAt: number): Promise<boolean>;
  /** Forgets spent nonces and jtis whose expiry is at or before `now`. */
  purgeExpired(now: number): Promise<void>;

  // grants
  insertGrant(g: NewGrant): Promise<StoredGrant>;
  getGrant(id: string): Promise<StoredGrant | undefined>;
  /** The newest approved timed/always grant of `requester` with this match key, unexpired at `now`. */
  findReusable(requester: string, matchKey: string, now: number): Promise<StoredGrant | undefined>;
  /** Newest first; `before` continues a listing without skipping or repeating (equal timestamps too). */
  queryGrants(q: GrantQuery): Promise<GrantPage>;
  /** Applies the transition if the current status allows it; the updated grant, or undefined. */
  transition(id: string, t: Transition): Promise<StoredGrant | undefined>;
  /** Marks approved grants past expires_at as expired; returns their ids. */
  expireDue(now: number): Promise<string[]>;

  /** What this store offers beyond the data (absent: nothing to do). */
  readonly lifecycle?: StoreLifecycle;

  /** Makes every write made so far durable, stops background work and releases the database. */
  close(): Promise<void>;
}

/**
 * Optional parts of a store's lifecycle; callers use each only when the store offers it. Background
 * housekeeping (SQLite: WAL checkpoints in a worker thread) is the implementation's own business,
 * started when it opens and stopped by close().
 */
export interface StoreLifecycle {
  /**
   * Resolves once every write made so far is committed (SQLite: group commit batches the writes of
   * one event-loop turn). The server answers no request before this resolves.
   */
  flush?(): Promise<void>;
  /**
   * A cheap synchronous counter that differs once another process has committed (key rotation, the
   * offline admin commands; SQLite: PRAGMA data_version). Without it nothing is kept in memory
   * across requests: idp/store/cache.ts and the keyring read the store every time.
   */
  changeMarker?(): number;
  /**
   * Resolves once changeMarker() reflects every change committed anywhere before the call (a store
   * whose marker follows notifications from other instances: PostgreSQL; one round trip).
   */
  sync?(): Promise<void>;
  /**
   * Calls onChange(id) when a grant changed in any instance or process, and onChange(undefined) when
   * changes may have been missed (the notification connection dropped or came back): re-read what
   * is waited on. Without it only this process's own changes wake long polls. Returns unsubscribe.
   */
  watchGrants?(onChange: (id: string | undefined) => void): () => void;
}
