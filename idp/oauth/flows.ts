import { createHash, randomBytes, randomUUID } from "node:crypto";
import { CLI_TOKEN_AUDIENCE, type Grant } from "../../protocol/types.ts";
import { delegatedTokenProblem, type Idp } from "../context.ts";
import { OAuthError } from "../http.ts";
import type { RefreshTokenRecord, UserRecord } from "../store/types.ts";
import { signToken } from "../tokens.ts";
import { CLI_CLIENT_ID, redirectUriAllowed } from "./clients.ts";
import {
  DEVICE_CODE_TTL,
  DEVICE_POLL_INTERVAL,
  formatUserCode,
  newUserCode,
  normalizeUserCode,
  pollOutcome,
} from "./device-code.ts";
import { verifierMatches } from "./pkce.ts";

/**
 * The OAuth grants of the token endpoint, one short ordered list of checks each: authorization
 * code + PKCE, refresh token (rotation, reuse detection), device code (RFC 8628); plus revocation
 * (RFC 7009) and what /authorize and /device store. Codes, refresh tokens and device codes are
 * 256-bit random values, stored only as SHA-256 hashes and spent by one conditional update each
 * (idp/store/types.ts).
 */

/** Seconds an authorization code lives. */
export const AUTH_CODE_TTL = 60;
/** Seconds a refresh token lives (each use replaces it with a new one). */
export const REFRESH_TOKEN_TTL = 30 * 24 * 3600;
/** The assertion (id_token) for an SP: exp - iat <= 300 (PROTOCOL section 2). */
export const ASSERTION_TTL = 300;

export const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

export function newSecret(): string {
  return randomBytes(32).toString("base64url");
}

export function secretHash(value: string): string {
  return createHash("sha256").update(value, "utf8").digest("base64url");
}

/** A secret a client sends back: bounded, base64url, or it cannot be one we issued. */
function secretParam(body: Record<string, unknown>, name: string): string {
  const v = body[name];
  if (typeof v !== "string" || v === "") throw new OAuthError("invalid_request", `${name} is required`);
  if (!/^[A-Za-z0-9_-]{43}$/.test(v)) throw new OAuthError("invalid_grant", `unknown ${name}`);
  return v;
}

function stringParam(body: Record<string, unknown>, name: string): string {
  const v = body[name];
  if (typeof v !== "string" || v === "") throw new OAuthError("invalid_request", `${name} is required`);
  if (v.length > 2000) throw new OAuthError("invalid_request", `${name} is too long`);
  return v;
}

/** The client of a request: the built-in CLI client or a registered one (public clients: no secret). */
async function knownClient(idp: Idp, clientId: string): Promise<void> {
  if (clientId === CLI_CLIENT_ID) return;
  if (!(await idp.store.getClient(clientId))) throw new OAuthError("invalid_client", "unknown client", 401);
}

/** Is this a client that may start a flow with this redirect URI (idp/oauth/clients.ts)? */
export async function clientAllows(idp: Idp, clientId: string, redirectUri: string): Promise<boolean> {
  const client = clientId === CLI_CLIENT_ID ? undefined : await idp.store.getClient(clientId);
  return redirectUriAllowed(clientId, client, redirectUri);
}

// --- what the interactive steps store ---

export interface CodeRequest {
  clientId: string;
  redirectUri: string;
  codeChallenge: string;
  nonce: string;
  sub: string;
}

/** A new authorization code for a checked request of a logged-in human (/authorize). */
export async function issueAuthCode(idp: Idp, r: CodeRequest): Promise<string> {
  const code = newSecret();
  const now = idp.now();
  await idp.store.insertAuthCode({
    codeHash: secretHash(code),
    ...r,
    familyId: randomUUID(),
    createdAt: now,
    expiresAt: now + AUTH_CODE_TTL,
  });
  return code;
}

export interface DeviceStart {
  device_code: string;
  user_code: string;
  verification_uri: string;
  verification_uri_complete: string;
  expires_in: number;
  interval: number;
}

/** POST /device_authorization (RFC 8628 section 3.1-3.2). */
export async function startDeviceAuthorization(
  idp: Idp,
  body: Record<string, unknown>,
  verificationUri: string,
): Promise<DeviceStart> {
  const clientId = stringParam(body, "client_id");
  await knownClient(idp, clientId);
  const now = idp.now();
  const deviceCode = newSecret();
  // A user code taken by another pending authorization: draw again (20^8 values, few live at once).
  for (let attempt = 0; ; attempt++) {
    const userCode = newUserCode();
    try {
      await idp.store.insertDeviceCode({
        deviceHash: secretHash(deviceCode),
        userCode,
        clientId,
        status: "pending",
        interval: DEVICE_POLL_INTERVAL,
        createdAt: now,
        expiresAt: now + DEVICE_CODE_TTL,
      });
    } catch (e) {
      if (attempt < 5) continue;
      throw e;
    }
    const shown = formatUserCode(userCode);
    return {
      device_code: deviceCode,
      user_code: shown,
      verification_uri: verificationUri,
      verification_uri_complete: `${verificationUri}?user_code=${shown}`,
      expires_in: DEVICE_CODE_TTL,
      interval: DEVICE_POLL_INTERVAL,
    };
  }
}

/** The device authorization a person typed the code of, if it is live (the /device page). */
export async function pendingDeviceCode(idp: Idp, typed: unknown) {
  const userCode = normalizeUserCode(typed);
  if (!userCode) return undefined;
  const d = await idp.store.getDeviceCodeByUserCode(userCode, idp.now());
  return d?.status === "pending" ? d : undefined;
}

/** A human approves or denies a device authorization; false when it is no longer pending. */
export async function decideDeviceCode(
  idp: Idp,
  userCode: string,
  human: string,
  approve: boolean,
): Promise<boolean> {
  const done = await idp.store.decideDeviceCode(userCode, approve ? "approved" : "denied", human, idp.now());
  if (done) idp.log.log("info", approve ? "device approved" : "device denied", { sub: human });
  return done;
}

// --- the token endpoint's grants ---

/** `grant_type=authorization_code` (RFC 6749 section 4.1.3 with RFC 7636). */
export async function authorizationCodeGrant(idp: Idp, body: Record<string, unknown>) {
  const clientId = stringParam(body, "client_id");
  const redirectUri = stringParam(body, "redirect_uri");
  const code = secretParam(body, "code");
  const verifier = stringParam(body, "code_verifier");
  await knownClient(idp, clientId);
  const now = idp.now();
  const hash = secretHash(code);
  const spent = await idp.store.spendAuthCode(hash, now);
  if (!spent) {
    // A replayed code: whoever holds it may be an attacker, so the tokens it gave are revoked too
    // (RFC 6749 section 4.1.2).
    const seen = await idp.store.getAuthCode(hash);
    if (seen?.usedAt !== undefined && (await idp.store.revokeRefreshFamily(seen.familyId, now))) {
      idp.log.log("warn", "authorization code replayed: its refresh tokens are revoked", { sub: seen.sub });
    }
    throw new OAuthError("invalid_grant", "unknown, used or expired code");
  }
  // The code is spent whatever follows: a wrong verifier or redirect burns it.
  if (spent.clientId !== clientId)
    throw new OAuthError("invalid_grant", "the code was issued to another client");
  if (spent.redirectUri !== redirectUri) {
    throw new OAuthError("invalid_grant", "redirect_uri differs from the authorization request");
  }
  if (!verifierMatches(verifier, spent.codeChallenge)) {
    throw new OAuthError("invalid_grant", "code_verifier does not match the code_challenge");
  }
  const user = await humanUser(idp, spent.sub);
  return humanTokens(idp, user, clientId, spent.familyId, spent.nonce);
}

/** `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 section 3.4-3.5). */
export async function deviceCodeGrant(idp: Idp, body: Record<string, unknown>) {
  const clientId = stringParam(body, "client_id");
  const deviceCode = secretParam(body, "device_code");
  const hash = secretHash(deviceCode);
  const now = idp.now();
  const d = await idp.store.getDeviceCode(hash);
  if (!d) throw new OAuthError("expired_token", "unknown or expired device_code");
  if (d.clientId !== clientId)
    throw new OAuthError("invalid_grant", "the device_code was issued to another client");
  const outcome = pollOutcome(d, now);
  switch (outcome.kind) {
    case "expired_token":
      throw new OAuthError("expired_token", "the device_code has expired or was used");
    case "access_denied":
      throw new OAuthError("access_denied", "the request was denied");
    case "slow_down":
      await idp.store.recordDevicePoll(hash, now, outcome.interval);
      throw new OAuthError("slow_down", `polling too fast: wait ${outcome.interval} s between polls`);
    case "authorization_pending":
      await idp.store.recordDevicePoll(hash, now, d.interval);
      throw new OAuthError("authorization_pending", "waiting for the user to approve");
    case "approved": {
      const spent = await idp.store.spendDeviceCode(hash, now);
      if (!spent?.sub) throw new OAuthError("expired_token", "the device_code has expired or was used");
      const user = await humanUser(idp, spent.sub);
      return humanTokens(idp, user, clientId, randomUUID(), undefined);
    }
  }
}

/**
 * `grant_type=refresh_token` (RFC 6749 section 6; OAuth 2.1 rotation for public clients). Checks in
 * order: client_id given and known; the token spent now by this call (else: a spent one is a
 * replay and revokes its whole family); issued to this client (else the family is revoked: it
 * leaked); the subject still enabled and still of the kind the session was for; a delegated
 * session's delegation still valid. The new tokens keep the actor exactly.
 */
export async function refreshTokenGrant(idp: Idp, body: Record<string, unknown>) {
  const clientId = stringParam(body, "client_id");
  const token = secretParam(body, "refresh_token");
  await knownClient(idp, clientId);
  const now = idp.now();
  const hash = secretHash(token);
  const spent = await idp.store.spendRefreshToken(hash, now);
  if (!spent) {
    const seen = await idp.store.getRefreshToken(hash);
    if (seen?.usedAt !== undefined && (await idp.store.revokeRefreshFamily(seen.familyId, now))) {
      idp.log.log("warn", "refresh token reused: its family is revoked", {
        sub: seen.sub,
        client: seen.clientId,
      });
    }
    throw new OAuthError("invalid_grant", "unknown, used, revoked or expired refresh token");
  }
  const revoke = async (why: string): Promise<never> => {
    await idp.store.revokeRefreshFamily(spent.familyId, now);
    idp.log.log("warn", `refresh refused: ${why}; the family is revoked`, { sub: spent.sub });
    throw new OAuthError("invalid_grant", why);
  };
  if (spent.clientId !== clientId) return revoke("the refresh token was issued to another client");
  const user = await idp.store.getUser(spent.sub);
  if (!user || user.disabled) return revoke("the account is disabled");
  // The actor is what the session was, never what it could become (an agent is never `human`).
  if (user.kind !== spent.act) return revoke("the account is no longer of the session's kind");
  if (spent.actingParty !== undefined) {
    const delegation = spent.delegationGrant
      ? (await idp.store.getGrant(spent.delegationGrant))?.grant
      : undefined;
    const problem = delegatedTokenProblem(
      user.email,
      spent.actingParty,
      delegation,
      await idp.store.getUser(spent.actingParty),
      now,
    );
    if (problem) return revoke(problem);
  }
  const { token: access, exp } = await accessToken(idp, spent, now);
  const refresh = await storeRefreshToken(idp, { ...spent, usedAt: undefined }, now);
  return {
    access_token: access,
    token_type: "Bearer",
    expires_in: exp - now,
    refresh_token: refresh,
  };
}

/** RFC 7009: always 200; a refresh token of this client revokes its whole family (`apes logout`). */
export async function revokeToken(idp: Idp, body: Record<string, unknown>): Promise<void> {
  const clientId = stringParam(body, "client_id");
  const token = body.token;
  if (typeof token !== "string" || token === "") throw new OAuthError("invalid_request", "token is required");
  const hint = body.token_type_hint;
  if (hint !== undefined && hint !== "refresh_token" && hint !== "access_token") {
    throw new OAuthError("unsupported_token_type", "token_type_hint must be refresh_token or access_token");
  }
  // Access tokens are short JWTs and are not revoked here (RFC 7009 section 2: support is optional).
  if (!/^[A-Za-z0-9_-]{43}$/.test(token)) return;
  const seen = await idp.store.getRefreshToken(secretHash(token));
  if (!seen || seen.clientId !== clientId) return;
  if (await idp.store.revokeRefreshFamily(seen.familyId, idp.now())) {
    idp.log.log("info", "refresh token revoked", { sub: seen.sub, client: clientId });
  }
}

// --- what a successful grant returns ---

async function humanUser(idp: Idp, sub: string): Promise<UserRecord> {
  const user = await idp.store.getUser(sub);
  if (!user || user.disabled || user.kind !== "human") {
    throw new OAuthError("invalid_grant", "the account is disabled or not a human's");
  }
  return user;
}

/**
 * The answer of a human's login (PROTOCOL section 2): the assertion for the client (`aud` =
 * client_id, `act: "human"`, the nonce, 300 s), also as `id_token`. The CLI client gets an access
 * token for the IdP's APIs (`aud: apes-cli`) and a refresh token; any other client gets the
 * assertion as its access token (useless at the IdP's APIs) and no refresh token, so an SP a
 * human logs in to can never act at the IdP as that human.
 */
async function humanTokens(
  idp: Idp,
  user: UserRecord,
  clientId: string,
  familyId: string,
  nonce: string | undefined,
) {
  const now = idp.now();
  const exp = now + ASSERTION_TTL;
  const claims: Record<string, unknown> = {
    iss: idp.issuer,
    sub: user.email,
    aud: clientId,
    iat: now,
    exp,
    jti: randomUUID(),
    act: "human",
  };
  if (nonce !== undefined) claims.nonce = nonce;
  const assertion = await signToken(claims, await idp.keys.signingKey(now, exp));
  idp.log.log("info", "login", { sub: user.email, method: "oauth", client: clientId });
  if (clientId !== CLI_CLIENT_ID) {
    return {
      assertion,
      id_token: assertion,
      access_token: assertion,
      token_type: "Bearer",
      expires_in: ASSERTION_TTL,
      authorization_details: [],
    };
  }
  const session = { sub: user.email, act: "human" as const, clientId, familyId };
  const access = await accessToken(idp, session, now);
  const refresh = await storeRefreshToken(idp, session, now);
  return {
    assertion,
    id_token: assertion,
    access_token: access.token,
    token_type: "Bearer",
    expires_in: access.exp - now,
    refresh_token: refresh,
    authorization_details: [],
  };
}

type Actor = Pick<RefreshTokenRecord, "sub" | "act" | "actingParty" | "delegationGrant">;

/**
 * The delegated token (PROTOCOL section 4): `sub` the delegator, `act.sub` the delegate, the
 * delegation and its scopes, never beyond the delegation's expiry. Token exchange and the refresh
 * of a delegated session both issue it through here.
 */
export async function signDelegatedToken(
  idp: Idp,
  delegation: Grant,
  delegate: string,
  audience: string,
  now: number,
  /** Claims a token for an SP adds (token exchange's revocation handles). */
  extra: Record<string, unknown> = {},
): Promise<{ token: string; exp: number }> {
  let exp = now + idp.tokenTtl;
  if (delegation.expires_at !== undefined) exp = Math.min(exp, delegation.expires_at);
  const claims = {
    iss: idp.issuer,
    sub: delegation.request.delegator,
    aud: audience,
    act: { sub: delegate },
    delegation_grant: delegation.id,
    scope: delegation.request.scopes ?? [],
    ...extra,
    iat: now,
    exp,
    jti: randomUUID(),
  };
  return { token: await signToken(claims, await idp.keys.signingKey(now, exp)), exp };
}

/** A token for the IdP's APIs with the same actor as the session (a delegated one stays delegated). */
async function accessToken(idp: Idp, s: Actor, now: number): Promise<{ token: string; exp: number }> {
  if (s.actingParty !== undefined) {
    // refreshTokenGrant checked the delegation (delegatedTokenProblem) just before.
    const d = s.delegationGrant ? (await idp.store.getGrant(s.delegationGrant))?.grant : undefined;
    if (!d) throw new OAuthError("invalid_grant", "the token's delegation does not exist");
    return signDelegatedToken(idp, d, s.actingParty, CLI_TOKEN_AUDIENCE, now);
  }
  const exp = now + idp.tokenTtl;
  const claims = {
    iss: idp.issuer,
    sub: s.sub,
    aud: CLI_TOKEN_AUDIENCE,
    act: s.act,
    iat: now,
    exp,
    jti: randomUUID(),
  };
  return { token: await signToken(claims, await idp.keys.signingKey(now, exp)), exp };
}

async function storeRefreshToken(
  idp: Idp,
  s: Actor & { clientId: string; familyId: string; usedAt?: undefined },
  now: number,
): Promise<string> {
  const token = newSecret();
  const record: RefreshTokenRecord = {
    tokenHash: secretHash(token),
    familyId: s.familyId,
    clientId: s.clientId,
    sub: s.sub,
    act: s.act,
    createdAt: now,
    expiresAt: now + REFRESH_TOKEN_TTL,
  };
  if (s.actingParty !== undefined) record.actingParty = s.actingParty;
  if (s.delegationGrant !== undefined) record.delegationGrant = s.delegationGrant;
  await idp.store.insertRefreshToken(record);
  return token;
}
