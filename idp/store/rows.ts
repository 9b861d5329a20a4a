import type { Grant, GrantRequest } from "../../protocol/types.ts";
import type {
  AuthCodeRecord,
  ClientRecord,
  DeviceCodeRecord,
  InviteRecord,
  NotificationRecord,
  NotifyChannel,
  NotifyEvent,
  PasskeyRecord,
  RefreshTokenRecord,
  SigningKeyRecord,
  StoredGrant,
  SubscriptionRecord,
  UserRecord,
  WebSessionRecord,
} from "./types.ts";

/*
 * The rows of both stores' schemas and the one mapping of each to its record: a record read from
 * SQLite and one read from PostgreSQL have the same fields in the same order.
 */

/** The grants table's columns a grant is read from, in both stores' schemas. */
export const GRANT_COLS =
  "seq, id, type, status, request, decided_by, created_at, decided_at, expires_at, used_at, version, created_act, decided_act, approval_proof";

/** Those columns of one row (`request` as the driver gives it: text on SQLite, parsed on PostgreSQL). */
export interface GrantColumns<R = GrantRequest> {
  seq: number;
  id: string;
  type: Grant["type"];
  status: Grant["status"];
  request: R;
  decided_by: string | null;
  created_at: number;
  decided_at: number | null;
  expires_at: number | null;
  used_at: number | null;
  version: number;
  created_act: string | null;
  decided_act: string | null;
  approval_proof: string | null;
}

/**
 * The grant a row holds, with `request` parsed: the one mapping of both stores (and of
 * idp/store/transitioned.ts), so every copy of a grant has the same fields in the same order.
 */
export function storedGrantOf(r: Omit<GrantColumns<unknown>, "request">, request: GrantRequest): StoredGrant {
  const grant: Grant = { id: r.id, type: r.type, request, status: r.status, created_at: r.created_at };
  if (r.decided_by !== null) grant.decided_by = r.decided_by;
  if (r.decided_at !== null) grant.decided_at = r.decided_at;
  if (r.expires_at !== null) grant.expires_at = r.expires_at;
  if (r.used_at !== null) grant.used_at = r.used_at;
  if (r.approval_proof !== null)
    grant.approval_proof = r.approval_proof as NonNullable<Grant["approval_proof"]>;
  const stored: StoredGrant = { grant, version: r.version, seq: r.seq };
  if (r.created_act !== null) stored.createdAct = r.created_act;
  if (r.decided_act !== null) stored.decidedAct = r.decided_act;
  return stored;
}

/*
 * The other tables' rows. A column the two drivers give in different forms (a boolean as 0/1 or
 * true/false, a list as JSON text or an array) is a type parameter, defaulting to PostgreSQL's
 * form; the mapper takes its decoded value beside the row, so each store decodes only what its
 * driver leaves undecoded and the fields are set here once.
 */

/** A users row (`approvers` come from their own table). */
export interface UserColumns<Bool = boolean> {
  email: string;
  kind: "human" | "agent";
  owner: string | null;
  admin: Bool;
  disabled: Bool;
  public_key: string | null;
  fingerprint: string | null;
  name: string | null;
  created_at: number;
}

export function userOf(
  r: UserColumns<unknown>,
  decoded: { admin: boolean; disabled: boolean; approvers: string[] },
): UserRecord {
  const u: UserRecord = {
    email: r.email,
    kind: r.kind,
    approvers: decoded.approvers,
    admin: decoded.admin,
    disabled: decoded.disabled,
    createdAt: r.created_at,
  };
  if (r.owner !== null) u.owner = r.owner;
  if (r.public_key !== null) u.publicKey = r.public_key;
  if (r.fingerprint !== null) u.fingerprint = r.fingerprint;
  if (r.name !== null) u.name = r.name;
  return u;
}

export interface PasskeyColumns<List = string[], Bool = boolean> {
  credential_id: string;
  email: string;
  public_key: string;
  counter: number;
  transports: List;
  device_type: "singleDevice" | "multiDevice";
  backed_up: Bool;
  created_at: number;
  last_used_at: number | null;
}

export function passkeyOf(
  r: PasskeyColumns<unknown, unknown>,
  decoded: { transports: string[]; backedUp: boolean },
): PasskeyRecord {
  const p: PasskeyRecord = {
    credentialId: r.credential_id,
    email: r.email,
    publicKey: r.public_key,
    counter: r.counter,
    transports: decoded.transports,
    deviceType: r.device_type,
    backedUp: decoded.backedUp,
    createdAt: r.created_at,
  };
  if (r.last_used_at !== null) p.lastUsedAt = r.last_used_at;
  return p;
}

export interface InviteColumns {
  id: string;
  email: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export function inviteOf(r: InviteColumns): InviteRecord {
  const i: InviteRecord = { id: r.id, email: r.email, createdAt: r.created_at, expiresAt: r.expires_at };
  if (r.used_at !== null) i.usedAt = r.used_at;
  return i;
}

export interface ClientColumns<List = string[]> {
  id: string;
  redirect_uris: List;
  created_at: number;
}

export function clientOf(r: ClientColumns<unknown>, redirectUris: string[]): ClientRecord {
  return { id: r.id, redirectUris, createdAt: r.created_at };
}

export interface AuthCodeColumns {
  code_hash: string;
  client_id: string;
  redirect_uri: string;
  code_challenge: string;
  nonce: string;
  sub: string;
  family_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export function authCodeOf(r: AuthCodeColumns): AuthCodeRecord {
  const c: AuthCodeRecord = {
    codeHash: r.code_hash,
    clientId: r.client_id,
    redirectUri: r.redirect_uri,
    codeChallenge: r.code_challenge,
    nonce: r.nonce,
    sub: r.sub,
    familyId: r.family_id,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
  if (r.used_at !== null) c.usedAt = r.used_at;
  return c;
}

export interface RefreshTokenColumns {
  token_hash: string;
  family_id: string;
  client_id: string;
  sub: string;
  act: "human" | "agent";
  acting_party: string | null;
  delegation_grant: string | null;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export function refreshTokenOf(r: RefreshTokenColumns): RefreshTokenRecord {
  const t: RefreshTokenRecord = {
    tokenHash: r.token_hash,
    familyId: r.family_id,
    clientId: r.client_id,
    sub: r.sub,
    act: r.act,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
  if (r.acting_party !== null) t.actingParty = r.acting_party;
  if (r.delegation_grant !== null) t.delegationGrant = r.delegation_grant;
  if (r.used_at !== null) t.usedAt = r.used_at;
  return t;
}

export interface DeviceCodeColumns {
  device_hash: string;
  user_code: string;
  client_id: string;
  status: DeviceCodeRecord["status"];
  sub: string | null;
  poll_interval: number;
  last_poll_at: number | null;
  created_at: number;
  expires_at: number;
  decided_at: number | null;
}

export function deviceCodeOf(r: DeviceCodeColumns): DeviceCodeRecord {
  const d: DeviceCodeRecord = {
    deviceHash: r.device_hash,
    userCode: r.user_code,
    clientId: r.client_id,
    status: r.status,
    interval: r.poll_interval,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
  if (r.sub !== null) d.sub = r.sub;
  if (r.last_poll_at !== null) d.lastPollAt = r.last_poll_at;
  if (r.decided_at !== null) d.decidedAt = r.decided_at;
  return d;
}

export interface SubscriptionColumns<List = NotifyEvent[]> {
  id: string;
  owner: string;
  channel: NotifyChannel;
  target: string;
  secret: string | null;
  events: List;
  created_at: number;
}

export function subscriptionOf(r: SubscriptionColumns<unknown>, events: NotifyEvent[]): SubscriptionRecord {
  const s: SubscriptionRecord = {
    id: r.id,
    owner: r.owner,
    channel: r.channel,
    target: r.target,
    events,
    createdAt: r.created_at,
  };
  if (r.secret !== null) s.secret = r.secret;
  return s;
}

/** A notify_outbox row. */
export interface NotificationColumns {
  id: number;
  key: string;
  subscription_id: string;
  grant_id: string | null;
  event: NotifyEvent;
  payload: string;
  status: NotificationRecord["status"];
  attempts: number;
  due_at_ms: number;
  last_error: string | null;
  created_at: number;
  delivered_at: number | null;
}

export function notificationOf(r: NotificationColumns): NotificationRecord {
  const n: NotificationRecord = {
    id: r.id,
    key: r.key,
    subscriptionId: r.subscription_id,
    event: r.event,
    payload: r.payload,
    status: r.status,
    attempts: r.attempts,
    dueAtMs: r.due_at_ms,
    createdAt: r.created_at,
  };
  if (r.grant_id !== null) n.grantId = r.grant_id;
  if (r.last_error !== null) n.lastError = r.last_error;
  if (r.delivered_at !== null) n.deliveredAt = r.delivered_at;
  return n;
}

/** A signing_keys row (`private_key` as stored: sealed on PostgreSQL, see its key-file.ts). */
export interface SigningKeyColumns {
  kid: string;
  private_key: string;
  created_at: number;
  retired_at: number | null;
  max_exp: number;
}

export function signingKeyOf(r: SigningKeyColumns, privateKey: string): SigningKeyRecord {
  const k: SigningKeyRecord = { kid: r.kid, privateKey, createdAt: r.created_at, maxExp: r.max_exp };
  if (r.retired_at !== null) k.retiredAt = r.retired_at;
  return k;
}

/** The web_sessions columns a session is read from. */
export interface WebSessionColumns {
  id: string;
  email: string;
  created_at: number;
  expires_at: number;
}

export function webSessionOf(r: WebSessionColumns): WebSessionRecord {
  return { id: r.id, email: r.email, createdAt: r.created_at, expiresAt: r.expires_at };
}
