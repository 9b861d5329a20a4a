import type { ApprovalProofRecord } from "../../protocol/approval.ts";
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
  /** Notifications of this grant, written in the same transaction (see the notifications section). */
  outbox?: readonly NewNotification[];
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
  /** When the change happened (Unix seconds): the time of the revocation event a revoked delegation appends. */
  at?: number;
  /** An approval: the proof it came with (protocol/approval.ts), shown as the grant's approval_proof. */
  approvalProof?: ApprovalProofRecord;
  /** Notifications of the change, written in the same transaction only when the transition applies. */
  outbox?: readonly NewNotification[];
  /**
   * The grant as the caller knows it now (the read cache's copy): the transition then applies only
   * to that version of the row, and a store may build its answer from it (idp/store/transitioned.ts)
   * instead of reading the row back.
   */
  seen?: StoredGrant;
}

/** An identity disabled (`user`, subject = its email) or a delegation revoked (subject = its id). */
export interface RevocationEvent {
  seq: number;
  kind: "user" | "delegation";
  subject: string;
  at: number;
}

/** How long revocation events are kept: longer than any token the IdP issues lives. */
export const REVOCATION_RETENTION_S = 86_400;

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
  /** Grants this identity approved or denied (the history page). */
  decidedBy?: string;
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

/** A registered OAuth client (`apes idp clients add`); the built-in CLI client is never stored. */
export interface ClientRecord {
  id: string;
  /** Matched exactly (idp/oauth/clients.ts). */
  redirectUris: string[];
  createdAt: number;
}

/** An authorization code, stored under the SHA-256 of its value and bound to everything it was issued for. */
export interface AuthCodeRecord {
  codeHash: string;
  clientId: string;
  redirectUri: string;
  /** The PKCE S256 challenge. */
  codeChallenge: string;
  nonce: string;
  /** The human who logged in. */
  sub: string;
  /** The refresh token family the code's exchange starts (revoked if the code is replayed). */
  familyId: string;
  createdAt: number;
  expiresAt: number;
  usedAt?: number;
}

/** A refresh token, stored under the SHA-256 of its value; it keeps the actor of the session it renews. */
export interface RefreshTokenRecord {
  tokenHash: string;
  familyId: string;
  clientId: string;
  sub: string;
  act: "human" | "agent";
  /** A delegated session: who acts for `sub` (act.sub), under which delegation. */
  actingParty?: string;
  delegationGrant?: string;
  createdAt: number;
  expiresAt: number;
  usedAt?: number;
}

export type DeviceCodeStatus = "pending" | "approved" | "denied" | "used";

/** A device authorization (RFC 8628), stored under the SHA-256 of the device code. */
export interface DeviceCodeRecord {
  deviceHash: string;
  /** Normalised (idp/oauth/device-code.ts); unique among stored codes. */
  userCode: string;
  clientId: string;
  status: DeviceCodeStatus;
  /** Who approved or denied. */
  sub?: string;
  interval: number;
  lastPollAt?: number;
  createdAt: number;
  expiresAt: number;
  decidedAt?: number;
}

export interface Store extends WebStore {
  // users (looked up by their normalised identity, protocol/names.ts; stored only in that form)
  /** Adds a user with its approvers atomically; rejects a duplicate or a name not in normal form. */
  addUser(user: NewUser): Promise<void>;
  getUser(email: string): Promise<UserRecord | undefined>;
  /** Every user, ordered by email. */
  listUsers(): Promise<UserRecord[]>;
  /**
   * false when there is no such user. Disabling also appends a revocation event at `at` (Unix
   * seconds), atomically with the change.
   */
  setDisabled(email: string, disabled: boolean, at: number): Promise<boolean>;
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
  /** Forgets spent nonces and jtis, and codes and refresh tokens, whose expiry is at or before `now`. */
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

  // revocation feed (a transition of a delegation to `revoked` appends one too, atomically)
  /** Events with seq > `after`, oldest first, at most `limit`; purgeExpired drops those older than a day. */
  revocationsAfter(after: number, limit: number): Promise<RevocationEvent[]>;
  /** The seq of the newest event (0 when there is none). */
  lastRevocation(): Promise<number>;

  // OAuth (idp/oauth/): registered clients, authorization codes, refresh tokens, device codes.
  // Secrets are stored only as SHA-256 hashes; every single-use value is spent by one conditional update.
  /** Rejects a duplicate id. */
  addClient(c: ClientRecord): Promise<void>;
  getClient(id: string): Promise<ClientRecord | undefined>;
  /** Ordered by id. */
  listClients(): Promise<ClientRecord[]>;
  /** false when there is no such client. */
  removeClient(id: string): Promise<boolean>;
  insertAuthCode(c: AuthCodeRecord): Promise<void>;
  /** Spends the code (unspent and unexpired at `now`): the record when this call spent it, else undefined. */
  spendAuthCode(codeHash: string, now: number): Promise<AuthCodeRecord | undefined>;
  /** The code whatever its state (to see a replay). */
  getAuthCode(codeHash: string): Promise<AuthCodeRecord | undefined>;
  /** Stores a refresh token, creating its family when it is the first one. */
  insertRefreshToken(r: RefreshTokenRecord): Promise<void>;
  /**
   * Spends the token: the record when this call spent it (unspent, unexpired at `now`, its family not
   * revoked), else undefined.
   */
  spendRefreshToken(tokenHash: string, now: number): Promise<RefreshTokenRecord | undefined>;
  /** The token whatever its state, with whether its family is revoked. */
  getRefreshToken(tokenHash: string): Promise<(RefreshTokenRecord & { familyRevoked: boolean }) | undefined>;
  /** Revokes every token of the family, also those issued later; false when it was revoked already. */
  revokeRefreshFamily(familyId: string, now: number): Promise<boolean>;
  /** Rejects a duplicate device hash or user code. */
  insertDeviceCode(d: DeviceCodeRecord): Promise<void>;
  getDeviceCode(deviceHash: string): Promise<DeviceCodeRecord | undefined>;
  /** The code a person typed, when it is still unexpired at `now`. */
  getDeviceCodeByUserCode(userCode: string, now: number): Promise<DeviceCodeRecord | undefined>;
  /** pending -> approved|denied by `sub`, while unexpired at `now`; false when it was not pending. */
  decideDeviceCode(userCode: string, to: "approved" | "denied", sub: string, now: number): Promise<boolean>;
  /** Records a poll at `now` and the interval the client must keep from now on. */
  recordDevicePoll(deviceHash: string, now: number, interval: number): Promise<void>;
  /** approved -> used, while unexpired at `now`: the record when this call spent it, else undefined. */
  spendDeviceCode(deviceHash: string, now: number): Promise<DeviceCodeRecord | undefined>;

  // notifications: subscriptions and the outbox (types in the section below the Store)
  /** Adds a subscription; rejects a duplicate id. */
  addSubscription(s: SubscriptionRecord): Promise<void>;
  getSubscription(id: string): Promise<SubscriptionRecord | undefined>;
  /** The subscriptions of these owners (bounded: each owner has at most MAX_SUBSCRIPTIONS), oldest first. */
  subscriptionsOf(owners: readonly string[]): Promise<SubscriptionRecord[]>;
  /** Removes the subscription (only the owner's, when `owner` is given) and its pending rows; false when none. */
  removeSubscription(id: string, owner?: string): Promise<boolean>;
  /** Writes outbox rows on their own (a test notification); a duplicate key is ignored. Returns the rows written. */
  enqueueNotifications(rows: readonly NewNotification[]): Promise<number>;
  /**
   * Pending rows due at `nowMs` (dueAtMs <= nowMs), earliest first, at most `limit`, none of the
   * subscriptions in `skip` (the worker's busy ones: a receiver that hangs holds one slot, not all).
   */
  dueNotifications(nowMs: number, limit: number, skip?: readonly string[]): Promise<NotificationRecord[]>;
  /** The earliest dueAtMs of a pending row (the worker's next wake-up), undefined when none. */
  nextNotificationDue(): Promise<number | undefined>;
  /** Records one delivery attempt of a pending row; false when the row is no longer pending. */
  recordAttempt(id: number, outcome: AttemptOutcome): Promise<boolean>;
  /** Newest first, optionally only one status and/or the rows of one owner's subscriptions. */
  listNotifications(q: NotificationQuery): Promise<NotificationRecord[]>;
  /** A dead row back to pending, attempts reset, due at `nowMs`; false when it is not dead. */
  retryNotification(id: number, nowMs: number): Promise<boolean>;
  /** Forgets delivered and dead rows created before `before` (Unix seconds), at most 1000 a call; how many. */
  purgeNotifications(before: number): Promise<number>;

  /**
   * The issuer the server last ran as, for the invite links of the offline admin commands. Only a
   * store shared by several hosts (PostgreSQL) keeps it; otherwise it is a file in the data dir.
   */
  recordIssuer?(issuer: string): Promise<void>;
  recordedIssuer?(): Promise<string | undefined>;

  /** What this store offers beyond the data (absent: nothing to do). */
  readonly lifecycle?: StoreLifecycle;

  /** Makes every write made so far durable, stops background work and releases the database. */
  close(): Promise<void>;
}

// --- notifications -------------------------------------------------------------------------------
// The outbox (idp/notify/): one row per (grant, event, subscription), keyed by an idempotency key
// that is also sent to the receiver, so a row is never written twice and a receiver can drop a
// repeated delivery. Rows for a grant are written in the grant's own transaction (NewGrant.outbox,
// Transition.outbox): a committed pending grant always has its notifications, none are written for a
// change that did not happen. Delivery is at least once: a row stays pending until an attempt is
// recorded, so a restart delivers what was left.

/** Most subscriptions one user may have (bounds the fan-out of one grant). */
export const MAX_SUBSCRIPTIONS = 20;

export type NotifyChannel = "webhook" | "ntfy" | "email" | "webpush";

export interface SubscriptionRecord {
  id: string;
  owner: string;
  channel: NotifyChannel;
  /** Where to: a webhook or ntfy topic URL, a mail address, a push service endpoint. */
  target: string;
  /** Channel secrets: the webhook's HMAC key, a push subscription's p256dh and auth keys. Never logged or listed. */
  secret?: string;
  /** Which events: "pending" (grants waiting for this user) and/or "decided" (this user's own grants). */
  events: readonly NotifyEvent[];
  createdAt: number;
}

export type NotifyEvent = "pending" | "decided" | "test";

export type NotificationStatus = "pending" | "delivered" | "dead";

export interface NewNotification {
  /** Idempotency key, unique: `${grant}.${event}.${subscription}` (test: its own id). */
  key: string;
  subscriptionId: string;
  grantId?: string;
  event: NotifyEvent;
  /** The notification's content as JSON (no token, no secret: idp/notify/content.ts). */
  payload: string;
  createdAt: number;
}

export interface NotificationRecord extends NewNotification {
  id: number;
  status: NotificationStatus;
  attempts: number;
  /** When the next attempt is due, in Unix milliseconds (backoff steps are below a second). */
  dueAtMs: number;
  lastError?: string;
  deliveredAt?: number;
}

export type AttemptOutcome =
  | { delivered: true; at: number }
  | { delivered: false; error: string; retryAtMs: number }
  | { delivered: false; error: string; dead: true };

export interface NotificationQuery {
  status?: NotificationStatus;
  owner?: string;
  limit: number;
}

/** What changeMarker(kind) can tell apart: the rarely written data kept in memory. */
export type ChangeKind = "users" | "subscriptions" | "keys";

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
   * across requests: idp/store/cache.ts and the keyring read the store every time. With a kind: a
   * counter that differs at least once another process has changed that kind of data (SQLite: one
   * counter a kind, kept by triggers), so the grants other workers write all the time leave cached
   * users, subscriptions and keys alone; a store that cannot tell kinds apart answers as without.
   */
  changeMarker?(kind?: ChangeKind): number;
  /**
   * A request begins: the next changeMarker() looks at the database again (SQLite reads
   * data_version once per request instead of at every cached lookup; see its changeMarker).
   */
  beginRequest?(): void;
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

// --- the browser side: passkeys, invites, web sessions (idp/web/) ---

/** A WebAuthn credential of a human (idp/web/passkeys.ts). Binary values are base64url. */
export interface PasskeyRecord {
  /** The credential id (base64url), unique over all users. */
  credentialId: string;
  email: string;
  /** COSE public key (base64url). */
  publicKey: string;
  /** The authenticator's signature counter as last seen (0: it keeps none). */
  counter: number;
  transports: string[];
  /** WebAuthn backup eligibility ("multiDevice") and backup state, as last reported. */
  deviceType: "singleDevice" | "multiDevice";
  backedUp: boolean;
  createdAt: number;
  lastUsedAt?: number;
}

/** A one-time registration link; only the SHA-256 of its secret is stored. */
export interface InviteRecord {
  /** base64url SHA-256 of the secret in the link's fragment. */
  id: string;
  email: string;
  createdAt: number;
  expiresAt: number;
  usedAt?: number;
}

/** A browser session; only the SHA-256 of the cookie value is stored. */
export interface WebSessionRecord {
  /** base64url SHA-256 of the session cookie's value. */
  id: string;
  email: string;
  createdAt: number;
  expiresAt: number;
}

/**
 * The records of the browser side, kept apart from the rest of the Store so another implementation
 * can add them on their own. Same rules: times passed in, single use by one conditional statement.
 */
export interface WebStore {
  /** false when the credential id is already registered (to anyone). */
  addPasskey(p: PasskeyRecord): Promise<boolean>;
  getPasskey(credentialId: string): Promise<PasskeyRecord | undefined>;
  /** The user's passkeys, oldest first. */
  listPasskeys(email: string): Promise<PasskeyRecord[]>;
  /**
   * Records a verified use: sets counter, backed_up and last_used_at only when the stored counter
   * is still `fromCounter` (compare-and-set: of two concurrent uses with one counter, one wins).
   */
  recordPasskeyUse(
    credentialId: string,
    u: { fromCounter: number; counter: number; backedUp: boolean; usedAt: number },
  ): Promise<boolean>;
  /** false when `email` has no such passkey. */
  removePasskey(email: string, credentialId: string): Promise<boolean>;

  addInvite(i: InviteRecord): Promise<void>;
  /** An unspent, unexpired invite (read only: the page shows whom it is for). */
  getInvite(id: string, now: number): Promise<InviteRecord | undefined>;
  /** Spends the invite if unspent and unexpired at `now` (one conditional update); else undefined. */
  redeemInvite(id: string, now: number): Promise<InviteRecord | undefined>;

  addWebSession(s: WebSessionRecord): Promise<void>;
  /** The session if it exists and has not expired at `now`. */
  getWebSession(id: string, now: number): Promise<WebSessionRecord | undefined>;
  /** false when there was no such session. */
  endWebSession(id: string): Promise<boolean>;
  /** Ends every session of the user (disable, recovery); how many there were. */
  endWebSessionsOf(email: string): Promise<number>;
  /** Forgets sessions and invites that expired at or before `now`. */
  purgeExpiredWeb(now: number): Promise<void>;
}
