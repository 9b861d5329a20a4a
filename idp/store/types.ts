import type { Grant, GrantCategory, GrantStatus } from "../../protocol/types.ts";

/**
 * The IdP's persistence, behind an interface so a PostgreSQL store can follow the SQLite one.
 * Times are Unix seconds and always passed in by the caller (no hidden clock). Every method is an
 * indexed lookup or a bounded scan: per-request cost must not grow with the number of stored grants.
 * State changes are conditional updates (compare-and-set on the current status), never read-then-write.
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
  // users
  addUser(user: NewUser): void;
  getUser(email: string): UserRecord | undefined;
  listUsers(): UserRecord[];
  setDisabled(email: string, disabled: boolean): boolean;
  /** Users this human may decide for: agents it owns and users naming it as an approver. */
  subordinatesOf(email: string): string[];

  // signing keys
  listSigningKeys(): SigningKeyRecord[];
  addSigningKey(key: SigningKeyRecord): void;
  /** Retires every active key except `keepKid` (rotation). */
  retireSigningKeys(exceptKid: string, now: number): void;
  raiseKeyMaxExp(kid: string, maxExp: number): void;
  /** Cheap change counter: differs when another process committed (key rotation, admin commands). */
  externalChangeMarker(): number;

  // single-use values (challenges, client-assertion jti)
  /**
   * Records the nonce of a used login challenge (idp/challenges.ts) until it expires; false when it
   * was already spent. Challenges themselves are stateless: only spent ones are stored.
   */
  spendChallenge(nonce: string, subject: string, expiresAt: number): boolean;
  /** Records a jti; false when it was already used (replay). */
  useJti(jti: string, expiresAt: number): boolean;
  purgeExpired(now: number): void;

  // grants
  insertGrant(g: NewGrant): StoredGrant;
  getGrant(id: string): StoredGrant | undefined;
  findReusable(requester: string, matchKey: string, now: number): StoredGrant | undefined;
  queryGrants(q: GrantQuery): GrantPage;
  /** Applies the transition if the current status allows it; the updated grant, or undefined. */
  transition(id: string, t: Transition): StoredGrant | undefined;
  /** Marks approved grants past expires_at as expired; returns their ids. */
  expireDue(now: number): string[];

  /** Pending durability: resolves once every write made so far is committed (undefined: none). */
  flushed?(): Promise<void> | undefined;

  /** Housekeeping the server runs on a timer (SQLite: a passive WAL checkpoint). */
  checkpoint(): void;

  close(): void;
}
