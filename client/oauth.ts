import { createHash, randomBytes } from "node:crypto";
import { visible } from "../protocol/display.ts";
import { CLOCK_SKEW_S, JwtError, publicKeyFromJwk, verifyJwt } from "../protocol/jwt.ts";
import { canonicalIdentity } from "../protocol/names.ts";
import { CLI_CLIENT_ID, CLI_TOKEN_AUDIENCE } from "../protocol/types.ts";
import type { ClientContext } from "./context.ts";
import { type IdpEndpoints, idpEndpoints, normalizeIdpUrl, requireEndpoint } from "./discovery.ts";
import { ClientError, HttpProblem } from "./errors.ts";
import { request } from "./http.ts";
import type { StoredSession } from "./session-store.ts";

/**
 * OAuth for a human's login without a key (PROTOCOL section 2): apes is the native public client
 * `apes-cli`. This file holds what the browser and device flows share: PKCE values, the token
 * requests, the id_token checks, the session they make, its refresh and its revocation.
 */

export { CLI_CLIENT_ID };

/** The assertion's lifetime, at most (PROTOCOL section 2). */
const MAX_ASSERTION_LIFETIME = 300;

/** 32 random bytes, base64url (43 characters): PKCE verifiers, state and nonce. */
export function randomToken(): string {
  return randomBytes(32).toString("base64url");
}

/** The PKCE pair (RFC 7636, S256): the verifier stays in this process, only the challenge is sent. */
export function pkcePair(): { verifier: string; challenge: string } {
  const verifier = randomToken();
  return { verifier, challenge: createHash("sha256").update(verifier).digest("base64url") };
}

/** The IdP's discovery, which must name the URL apes connected to as its issuer (like key login). */
export async function oauthEndpoints(ctx: ClientContext, idp: string): Promise<IdpEndpoints> {
  const e = await idpEndpoints(ctx, idp);
  let issuer: string | undefined;
  try {
    issuer = normalizeIdpUrl(e.issuer);
  } catch {
    issuer = undefined;
  }
  if (issuer !== e.idp) {
    const shown = visible(e.issuer, { max: 200 });
    throw new ClientError(
      "issuer_mismatch",
      `the IdP at ${e.idp} names another issuer in its discovery document (${shown}); refusing to log in there`,
      { idp: e.idp, issuer: shown },
    );
  }
  return e;
}

export interface TokenAnswer {
  access_token?: unknown;
  id_token?: unknown;
  assertion?: unknown;
  refresh_token?: unknown;
  expires_in?: unknown;
  token_type?: unknown;
  error?: unknown;
  error_description?: unknown;
  interval?: unknown;
}

/** POST to the token endpoint (form); OAuth error answers resolve with `error` set. */
export async function tokenRequest(
  ctx: ClientContext,
  e: IdpEndpoints,
  form: Record<string, string>,
): Promise<TokenAnswer> {
  const url = requireEndpoint(e, e.tokenEndpoint, "token_endpoint");
  try {
    const res = await request<TokenAnswer>(ctx, { url, form, accept: [400, 401] });
    return res.body ?? {};
  } catch (err) {
    if (err instanceof HttpProblem && err.code) return { error: err.code, error_description: err.detail };
    throw err;
  }
}

export type OAuthStep = ClientError<"oauth_refused">["details"]["step"];

/** An OAuth error from the IdP as a ClientError (the IdP's text escaped and cut). */
export function oauthFailure(
  what: string,
  step: OAuthStep,
  a: Pick<TokenAnswer, "error" | "error_description">,
): ClientError<"oauth_refused"> {
  const code = typeof a.error === "string" ? visible(a.error, { max: 60 }) : "unknown error";
  const desc =
    typeof a.error_description === "string" ? `: ${visible(a.error_description, { max: 300 })}` : "";
  return new ClientError("oauth_refused", `${what} (${code}${desc})`, { step, error: code });
}

/**
 * The id_token of a login: signed by a key in the IdP's JWKS, `iss` the discovered issuer, `aud`
 * apes-cli, unexpired, at most 300 s long, `act: "human"`, the nonce this process sent (when it sent
 * one), and `sub` exactly the email asked for. Returns its claims.
 */
export async function verifyIdToken(
  ctx: ClientContext,
  e: IdpEndpoints,
  idToken: unknown,
  expect: { email: string; nonce?: string },
): Promise<Record<string, unknown>> {
  const refuse = (why: string) =>
    new ClientError("id_token_refused", `the IdP's id_token is refused: ${why}`, { why });
  if (typeof idToken !== "string") throw refuse("there is none");
  const jwksUrl = requireEndpoint(e, e.jwksUri, "jwks_uri");
  const jwks = (await request<{ keys?: unknown }>(ctx, { url: jwksUrl })).body;
  const keys = Array.isArray(jwks?.keys) ? (jwks.keys as Record<string, unknown>[]) : [];
  let claims: Record<string, unknown>;
  try {
    claims = verifyJwt(idToken, (kid) => publicKeyFromJwk(keys.find((k) => k?.kid === kid)), {
      now: Math.floor(ctx.clock.now() / 1000),
      issuer: e.issuer,
      audience: CLI_TOKEN_AUDIENCE,
      leeway: CLOCK_SKEW_S,
    });
  } catch (err) {
    if (err instanceof JwtError) throw refuse(err.message);
    throw err;
  }
  if (expect.nonce !== undefined && claims.nonce !== expect.nonce) {
    throw refuse("the nonce is not the one sent");
  }
  if (claims.act !== "human") throw refuse('act is not "human"');
  if (typeof claims.iat !== "number" || (claims.exp as number) - claims.iat > MAX_ASSERTION_LIFETIME) {
    throw refuse(`it lives longer than ${MAX_ASSERTION_LIFETIME} s`);
  }
  const wanted = canonicalIdentity(expect.email);
  if (wanted === undefined || typeof claims.sub !== "string" || canonicalIdentity(claims.sub) !== wanted) {
    throw new ClientError(
      "identity_mismatch",
      `login as ${visible(expect.email)} failed: the IdP logged in ${visible(String(claims.sub), { max: 200 })}`,
      { email: expect.email },
    );
  }
  return claims;
}

/** The session a browser or device login makes from the token answer (after verifyIdToken). */
export function sessionFrom(
  ctx: ClientContext,
  e: IdpEndpoints,
  email: string,
  a: TokenAnswer,
  method: "browser" | "device",
): StoredSession {
  if (typeof a.access_token !== "string" || typeof a.refresh_token !== "string") {
    throw new ClientError(
      "unexpected_answer",
      "the IdP's token answer has no access_token or refresh_token",
      {},
    );
  }
  const nowS = Math.floor(ctx.clock.now() / 1000);
  return {
    version: 1,
    idp: e.idp,
    email: canonicalIdentity(email) ?? email,
    act: "human",
    token: a.access_token,
    ...accessTimes(a, nowS),
    refresh_token: a.refresh_token,
    client_id: CLI_CLIENT_ID,
    method,
    authenticated_at: nowS,
  };
}

/** exp and iat of the access token (the client reads its own token's times; the IdP verifies it). */
function accessTimes(a: TokenAnswer, nowS: number): { expires_at: number; issued_at: number } {
  let exp: unknown;
  let iat: unknown;
  try {
    const payload = JSON.parse(
      Buffer.from(String(a.access_token).split(".")[1] ?? "", "base64url").toString(),
    );
    exp = payload.exp;
    iat = payload.iat;
  } catch {
    // not a JWT we can read: fall back on expires_in
  }
  const expiresIn = typeof a.expires_in === "number" && a.expires_in > 0 ? a.expires_in : 3600;
  return {
    expires_at: typeof exp === "number" ? exp : nowS + expiresIn,
    issued_at: typeof iat === "number" ? iat : nowS,
  };
}

/**
 * Renews a browser or device session with its refresh token and client_id (the IdP rotates the
 * token: the new one replaces it in auth.json). Called under the auth.json lock (session.ts), so
 * two processes never spend the same refresh token: a second use would revoke the whole session.
 */
export async function refreshSession(ctx: ClientContext, s: StoredSession): Promise<StoredSession> {
  const e = await oauthEndpoints(ctx, s.idp);
  const a = await tokenRequest(ctx, e, {
    grant_type: "refresh_token",
    refresh_token: s.refresh_token!,
    client_id: s.client_id ?? CLI_CLIENT_ID,
  });
  if (a.error === "invalid_grant") {
    throw new ClientError(
      "session_ended",
      `the session of ${s.email} has ended at the IdP (logged out, revoked or expired)`,
      { email: s.email },
    );
  }
  if (a.error !== undefined) {
    throw oauthFailure(`the session of ${s.email} could not be renewed`, "refresh", a);
  }
  if (typeof a.access_token !== "string" || typeof a.refresh_token !== "string") {
    throw new ClientError(
      "unexpected_answer",
      "the IdP's refresh answer has no access_token or refresh_token",
      {},
    );
  }
  const nowS = Math.floor(ctx.clock.now() / 1000);
  ctx.debug(`session: renewed the token of ${s.email} with its refresh token`);
  return { ...s, token: a.access_token, ...accessTimes(a, nowS), refresh_token: a.refresh_token };
}

/** RFC 7009 revocation of the session's refresh token (its whole family at our IdP). */
export async function revokeSession(ctx: ClientContext, s: StoredSession): Promise<void> {
  const e = await idpEndpoints(ctx, s.idp);
  const url = requireEndpoint(e, e.revocationEndpoint, "revocation_endpoint");
  await request(ctx, {
    url,
    form: {
      token: s.refresh_token!,
      token_type_hint: "refresh_token",
      client_id: s.client_id ?? CLI_CLIENT_ID,
    },
  });
}
