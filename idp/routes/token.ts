import { type KeyObject, randomUUID } from "node:crypto";
import { KeyFormatError } from "../../protocol/keys.ts";
import { CLI_TOKEN_AUDIENCE } from "../../protocol/types.ts";
import type { Idp, Principal } from "../context.ts";
import { effectiveStatus } from "../grants.ts";
import { formOrJsonBody, OAuthError, type Router } from "../http.ts";
import {
  authorizationCodeGrant,
  DEVICE_CODE_GRANT,
  deviceCodeGrant,
  refreshTokenGrant,
  signDelegatedToken,
} from "../oauth/flows.ts";
import { registeredKey } from "../registered-keys.ts";
import type { UserRecord } from "../store/types.ts";
import { decodeJwt, signToken, TokenError, verifyJwt } from "../tokens.ts";
import { issueSessionToken } from "./auth.ts";
import { PATHS, TOKEN_EXCHANGE } from "./discovery.ts";

/**
 * The OAuth token endpoint: authorization code + PKCE, refresh tokens and the device code grant
 * (idp/oauth/flows.ts); RFC 8693 token exchange of one's own session token for an SP audience, or
 * on a delegation (subject_token optional when
 * delegation_grant_id names the delegation), and the older client_credentials form with an Ed25519
 * client assertion. Errors are OAuth `{error, error_description}` bodies.
 */

const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
const JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ASSERTION_MAX_LIFETIME = 300;

const KNOWN = new Set([
  "grant_type",
  "actor_token",
  "actor_token_type",
  "subject_token",
  "subject_token_type",
  "delegation_grant_id",
  "delegation_grant",
  "audience",
  "resource",
  "scope",
  "requested_token_type",
  "client_id",
  "client_assertion",
  "client_assertion_type",
  // authorization_code, refresh_token and device_code (idp/oauth/flows.ts)
  "code",
  "code_verifier",
  "redirect_uri",
  "refresh_token",
  "device_code",
]);

function param(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined || v === "") return undefined;
  if (typeof v !== "string") throw new OAuthError("invalid_request", `${name} must be a string`);
  return v;
}

/** Verifies an IdP session token for the token endpoint (OAuth errors instead of problems). */
async function sessionUser(idp: Idp, token: string, what: string): Promise<UserRecord> {
  let claims: Record<string, unknown>;
  try {
    claims = await idp.sessionClaims(token);
  } catch (e) {
    if (e instanceof TokenError) throw new OAuthError("invalid_grant", `${what}: ${e.message}`);
    throw e;
  }
  if (claims.act !== "human" && claims.act !== "agent") {
    throw new OAuthError("invalid_grant", `${what} must be the identity's own session token`);
  }
  const user = await idp.store.getUser(String(claims.sub));
  if (!user || user.disabled) throw new OAuthError("invalid_grant", `${what}: unknown or disabled identity`);
  return user;
}

/** Issues the delegated token `{sub: delegator, act: {sub: delegate}, ...}` after every check. */
async function exchange(
  idp: Idp,
  actor: UserRecord,
  grantId: string,
  audienceParam: string | undefined,
  subject?: string,
) {
  if (!/^[0-9a-f-]{36}$/.test(grantId)) throw new OAuthError("invalid_grant", "unknown delegation");
  const stored = await idp.store.getGrant(grantId);
  const g = stored?.grant;
  if (g?.type !== "delegation") throw new OAuthError("invalid_grant", "unknown delegation");
  if (g.request.delegate !== actor.email) {
    throw new OAuthError("invalid_grant", "the actor is not the delegate of this delegation");
  }
  if (subject !== undefined && subject !== g.request.delegator) {
    throw new OAuthError("invalid_grant", "subject_token does not name the delegator of this delegation");
  }
  const now = idp.now();
  const status = effectiveStatus(g, now);
  if (status !== "approved") throw new OAuthError("invalid_grant", `the delegation is ${status}`);
  const audience = audienceParam ?? (g.request.audience !== "*" ? g.request.audience : undefined);
  if (!audience) throw new OAuthError("invalid_request", "audience is required for a delegation to any SP");
  if (g.request.audience !== "*" && g.request.audience !== audience) {
    throw new OAuthError("invalid_target", "the delegation is not valid for this audience");
  }
  // A token for the IdP's own APIs only from a delegation naming them explicitly, never from "*".
  if (audience === CLI_TOKEN_AUDIENCE && g.request.audience !== CLI_TOKEN_AUDIENCE) {
    throw new OAuthError(
      "invalid_target",
      `a token for ${CLI_TOKEN_AUDIENCE} needs a delegation with that audience`,
    );
  }
  const delegator = await idp.store.getUser(g.request.delegator!);
  if (!delegator || delegator.disabled) throw new OAuthError("invalid_grant", "the delegator is disabled");
  if (g.request.grant_type === "once") {
    // Single use, atomically: the conditional update decides which of concurrent exchanges wins.
    const used = await idp.store.transition(g.id, { from: ["approved"], to: "used", usedAt: now });
    if (!used) throw new OAuthError("invalid_grant", "the delegation was already used");
    idp.events.changed(g.id);
  }
  const { token, exp } = await signDelegatedToken(
    idp,
    g,
    actor.email,
    audience,
    now,
    audience === CLI_TOKEN_AUDIENCE
      ? {}
      : spClaims(idp, actor, [
          ["user", g.request.delegator!],
          ["user", actor.email],
          ["delegation", g.id],
        ]),
  );
  idp.log.log("info", "token exchanged", {
    delegation: g.id,
    delegate: actor.email,
    delegator: g.request.delegator,
    aud: audience,
  });
  return {
    access_token: token,
    issued_token_type: JWT_TOKEN_TYPE,
    token_type: "Bearer",
    expires_in: exp - now,
    scope: (g.request.scopes ?? []).join(" "),
  };
}

const AUDIENCE = /^[\x21-\x7e]{1,256}$/;

/**
 * What a token for an SP says beyond the standard claims (docs/control-plane.md, "Tokens"), about
 * the identity that holds it (sub for its own token, act.sub for a delegated one): its `owner` (an
 * agent's) and `approvers`, so an SP such as the troop can tell who may command it; and `rev`, the
 * revocation-feed handles of everything whose revocation ends the token.
 */
function spClaims(
  idp: Idp,
  holder: UserRecord,
  revocable: [kind: "user" | "delegation", subject: string][],
): Record<string, unknown> {
  return {
    ...(holder.owner ? { owner: holder.owner } : {}),
    approvers: holder.approvers,
    rev: revocable.map(([kind, subject]) => idp.revocationHandle(kind, subject)),
  };
}

/** RFC 8693 exchange of one's own session token for a token at an SP: same sub and act, aud = the SP. */
async function ownTokenFor(idp: Idp, user: UserRecord, audience: string | undefined) {
  if (!audience || !AUDIENCE.test(audience) || audience === "*") {
    throw new OAuthError("invalid_request", "audience (the SP's client id) is required");
  }
  if (audience === CLI_TOKEN_AUDIENCE) {
    throw new OAuthError("invalid_target", `a session token is already a token for ${CLI_TOKEN_AUDIENCE}`);
  }
  const now = idp.now();
  const exp = now + idp.tokenTtl;
  const token = await signToken(
    {
      iss: idp.issuer,
      sub: user.email,
      aud: audience,
      act: user.kind,
      ...spClaims(idp, user, [["user", user.email]]),
      iat: now,
      exp,
      jti: randomUUID(),
    },
    await idp.keys.signingKey(now, exp),
  );
  idp.log.log("info", "token exchanged", { sub: user.email, aud: audience });
  return {
    access_token: token,
    issued_token_type: JWT_TOKEN_TYPE,
    token_type: "Bearer",
    expires_in: exp - now,
  };
}

/** The older form: an Ed25519 client assertion signed with the identity's own key (jti single use). */
async function assertionUser(idp: Idp, assertion: string, clientId: string | undefined): Promise<UserRecord> {
  const now = idp.now();
  let claims: Record<string, unknown>;
  let user: UserRecord | undefined;
  try {
    // The key is the issuer's registered key: read iss before verifying, then check it below.
    const iss = decodeJwt(assertion).payload.iss;
    user = typeof iss === "string" ? await idp.store.getUser(iss.toLowerCase()) : undefined;
    const key = user?.publicKey && !user.disabled ? assertionKey(user.publicKey) : undefined;
    claims = verifyJwt(assertion, () => key, {
      now,
      audience: [idp.base + PATHS.token, idp.issuer],
      leeway: 0,
    });
  } catch (e) {
    if (e instanceof TokenError)
      throw new OAuthError("invalid_client", `client_assertion: ${e.message}`, 401);
    throw e;
  }
  if (!user) throw new OAuthError("invalid_client", "client_assertion: unknown client", 401);
  if (claims.sub !== claims.iss || (clientId !== undefined && clientId.toLowerCase() !== user.email)) {
    throw new OAuthError(
      "invalid_client",
      "client_assertion: iss, sub and client_id must name the same identity",
      401,
    );
  }
  if (typeof claims.jti !== "string" || claims.jti.length === 0 || claims.jti.length > 200) {
    throw new OAuthError("invalid_client", "client_assertion needs a jti", 401);
  }
  const exp = claims.exp as number;
  const iat = typeof claims.iat === "number" ? claims.iat : now;
  if (exp - Math.min(iat, now) > ASSERTION_MAX_LIFETIME) {
    throw new OAuthError(
      "invalid_client",
      `client_assertion lifetime exceeds ${ASSERTION_MAX_LIFETIME} s`,
      401,
    );
  }
  // Replay protection: the jti is recorded until the assertion expires.
  if (!(await idp.store.useJti(`${user.email}:${claims.jti}`, exp + 60))) {
    throw new OAuthError("invalid_client", "client_assertion was already used (jti replay)", 401);
  }
  return user;
}

/** A user's registered ssh-ed25519 key, or undefined when it does not parse. */
function assertionKey(publicKey: string): KeyObject | undefined {
  try {
    return registeredKey(publicKey).key;
  } catch (e) {
    if (e instanceof KeyFormatError) return undefined;
    throw e;
  }
}

export function registerTokenRoutes(router: Router<Principal>, idp: Idp): void {
  router.add("POST", PATHS.token, false, async (call) => {
    const body = await formOrJsonBody(call);
    for (const k of Object.keys(body)) {
      if (!KNOWN.has(k)) throw new OAuthError("invalid_request", `unknown parameter ${k}`);
    }
    const grantType = param(body, "grant_type");
    const audience = param(body, "audience");
    if (grantType === "authorization_code")
      return { status: 200, body: await authorizationCodeGrant(idp, body) };
    if (grantType === "refresh_token") return { status: 200, body: await refreshTokenGrant(idp, body) };
    if (grantType === DEVICE_CODE_GRANT) return { status: 200, body: await deviceCodeGrant(idp, body) };
    if (grantType === TOKEN_EXCHANGE) {
      const actorToken = param(body, "actor_token");
      const delegationId = param(body, "delegation_grant_id") ?? param(body, "delegation_grant");
      if (!actorToken && !delegationId) {
        // No delegation: one's own session token (subject_token) for an SP audience.
        const subjectToken = param(body, "subject_token");
        if (!subjectToken) {
          throw new OAuthError(
            "invalid_request",
            "send subject_token (your own session token) with audience, or actor_token with delegation_grant_id",
          );
        }
        const subjectType = param(body, "subject_token_type");
        if (
          subjectType !== undefined &&
          subjectType !== JWT_TOKEN_TYPE &&
          subjectType !== ACCESS_TOKEN_TYPE
        ) {
          throw new OAuthError("invalid_request", `subject_token_type must be ${JWT_TOKEN_TYPE}`);
        }
        const user = await sessionUser(idp, subjectToken, "subject_token");
        return { status: 200, body: await ownTokenFor(idp, user, audience) };
      }
      if (!actorToken)
        throw new OAuthError("invalid_request", "actor_token (the delegate's own token) is required");
      const actorType = param(body, "actor_token_type");
      if (actorType !== undefined && actorType !== JWT_TOKEN_TYPE && actorType !== ACCESS_TOKEN_TYPE) {
        throw new OAuthError("invalid_request", `actor_token_type must be ${JWT_TOKEN_TYPE}`);
      }
      const grantId = delegationId;
      if (!grantId) throw new OAuthError("invalid_request", "delegation_grant_id is required");
      const actor = await sessionUser(idp, actorToken, "actor_token");
      const subjectToken = param(body, "subject_token");
      const subject = subjectToken
        ? (await sessionUser(idp, subjectToken, "subject_token")).email
        : undefined;
      return { status: 200, body: await exchange(idp, actor, grantId, audience, subject) };
    }
    if (grantType === "client_credentials") {
      if (param(body, "client_assertion_type") !== JWT_BEARER) {
        throw new OAuthError("invalid_client", `client_assertion_type must be ${JWT_BEARER}`, 401);
      }
      const assertion = param(body, "client_assertion");
      if (!assertion) throw new OAuthError("invalid_client", "client_assertion is required", 401);
      const user = await assertionUser(idp, assertion, param(body, "client_id"));
      const grantId = param(body, "delegation_grant") ?? param(body, "delegation_grant_id");
      if (grantId) return { status: 200, body: await exchange(idp, user, grantId, audience) };
      // Without a delegation: the identity's own session token (older agent login).
      const { token, expiresIn } = await issueSessionToken(idp, user);
      return {
        status: 200,
        body: {
          access_token: token,
          token_type: "Bearer",
          issued_token_type: JWT_TOKEN_TYPE,
          expires_in: expiresIn,
        },
      };
    }
    if (grantType === undefined) throw new OAuthError("invalid_request", "grant_type is required");
    throw new OAuthError("unsupported_grant_type", `grant_type ${grantType} is not supported`);
  });
}
