import { type KeyObject, sign } from "node:crypto";
import { visible } from "../protocol/display.ts";
import { decodeJwt } from "../protocol/jwt.ts";
import { canonicalIdentity } from "../protocol/names.ts";
import {
  advertisedFormats,
  isPlainChallenge,
  SIGNATURE_FORMAT_V1,
  SIGNATURE_FORMATS_FIELD,
  SignatureInputError,
  signingInput,
} from "../protocol/signatures.ts";
import type { ClientContext } from "./context.ts";
import { type IdpEndpoints, idpEndpoints, normalizeIdpUrl, requireEndpoint } from "./discovery.ts";
import { ClientError, HttpProblem } from "./errors.ts";
import { request } from "./http.ts";

/**
 * Ed25519 challenge-response login (docs/protocol.md, section 2): POST {id} to the challenge endpoint,
 * sign the challenge, POST {id, challenge, signature} to the authenticate endpoint. What the key
 * signs names the purpose and this IdP (docs/signatures.md), so a hostile IdP cannot use the
 * signature elsewhere; the raw challenge is signed only for an older IdP and only when the user
 * opted in. IdPs that only know the older `{agent_id}` body are handled by trying the other shape once.
 */

export interface KeyLoginResult {
  token: string;
  email: string;
  act: "human" | "agent";
  /** Unix seconds. */
  expiresAt: number;
  issuedAt?: number;
  endpoints: IdpEndpoints;
}

interface AuthenticateAnswer {
  token?: unknown;
  access_token?: unknown;
  id?: unknown;
  email?: unknown;
  act?: unknown;
  expires_in?: unknown;
}

export async function keyLogin(
  ctx: ClientContext,
  idp: string,
  email: string,
  key: KeyObject,
): Promise<KeyLoginResult> {
  const endpoints = await idpEndpoints(ctx, idp);
  const sign = await loginSigner(ctx, endpoints, email, key);
  const challengeUrl = requireEndpoint(
    endpoints,
    endpoints.challengeEndpoint,
    "ddisa_auth_challenge_endpoint",
  );
  const authenticateUrl = requireEndpoint(
    endpoints,
    endpoints.authenticateEndpoint,
    "ddisa_auth_authenticate_endpoint",
  );
  const idField = endpoints.challengeFamily === "auth" ? "id" : "agent_id";
  const otherField = idField === "id" ? "agent_id" : "id";

  let field = idField;
  let challenge: string;
  try {
    challenge = await askChallenge(ctx, challengeUrl, field, email);
  } catch (e) {
    // 400/422: maybe the IdP only knows the other body shape.
    if (!(e instanceof HttpProblem) || (e.status !== 400 && e.status !== 422)) throw loginError(e, email);
    ctx.debug(`login: challenge with {${field}} refused (${e.status}); trying {${otherField}}`);
    field = otherField;
    try {
      challenge = await askChallenge(ctx, challengeUrl, field, email);
    } catch (e2) {
      throw loginError(e2, email);
    }
  }
  const signature = sign(challenge);
  let answer: AuthenticateAnswer;
  try {
    const res = await request<AuthenticateAnswer>(ctx, {
      url: authenticateUrl,
      json: { [field]: email, challenge, signature },
    });
    answer = res.body ?? {};
  } catch (e) {
    throw loginError(e, email);
  }
  return interpret(ctx, answer, email, endpoints);
}

/**
 * How this login signs a challenge, decided before any is asked for: the IdP must name itself with
 * the URL apes connected to (else its signatures would name another IdP), and must verify the
 * domain-separated form unless the user opted in to the raw one.
 */
async function loginSigner(
  ctx: ClientContext,
  endpoints: IdpEndpoints,
  email: string,
  key: KeyObject,
): Promise<(challenge: string) => string> {
  let issuer: string | undefined;
  try {
    issuer = normalizeIdpUrl(endpoints.issuer);
  } catch {
    issuer = undefined;
  }
  if (issuer !== endpoints.idp) {
    throw new ClientError(
      "issuer_mismatch",
      `the IdP at ${endpoints.idp} names another issuer in its discovery document (${visible(endpoints.issuer, { max: 200 })}); refusing to sign a login for it`,
      { idp: endpoints.idp, issuer: endpoints.issuer },
    );
  }
  if (advertisedFormats(endpoints.document).includes(SIGNATURE_FORMAT_V1)) {
    return (challenge) => {
      try {
        return sign(null, signingInput("login", endpoints.idp, email, challenge), key).toString("base64");
      } catch (e) {
        if (e instanceof SignatureInputError)
          throw new ClientError("signing_failed", `cannot sign a login: ${e.message}`, {});
        throw e;
      }
    };
  }
  const config = await ctx.config();
  if (!config.allowRawLoginSignature) {
    throw new ClientError(
      "raw_signature_refused",
      `the IdP at ${endpoints.idp} does not advertise ${SIGNATURE_FORMAT_V1} login signatures (${SIGNATURE_FORMATS_FIELD}); signing its bare challenge would let it use your key at other IdPs`,
      { idp: endpoints.idp },
    );
  }
  ctx.warn({ kind: "raw_login_signature", idp: endpoints.idp });
  return (challenge) => sign(null, Buffer.from(challenge, "utf8"), key).toString("base64");
}

async function askChallenge(ctx: ClientContext, url: string, field: string, email: string): Promise<string> {
  const res = await request<{ challenge?: unknown }>(ctx, { url, json: { [field]: email } });
  const c = res.body?.challenge;
  // A plain challenge holds no separator and no "." (never a JWT signing input): see docs/signatures.md.
  if (!isPlainChallenge(c)) {
    throw new ClientError(
      "bad_challenge",
      "the IdP answered the login challenge request without a plain challenge (16-256 characters of A-Z a-z 0-9 _ ~ + / = -); refusing to sign it",
      {},
    );
  }
  return c;
}

function interpret(
  ctx: ClientContext,
  a: AuthenticateAnswer,
  email: string,
  endpoints: IdpEndpoints,
): KeyLoginResult {
  const token =
    typeof a.token === "string" ? a.token : typeof a.access_token === "string" ? a.access_token : undefined;
  if (!token) {
    throw new ClientError("no_token", "the IdP accepted the signature but returned no token", {});
  }
  const claims = decodeJwtPayload(token);
  const nowS = Math.floor(ctx.clock.now() / 1000);
  const expiresAt =
    typeof claims?.exp === "number"
      ? claims.exp
      : typeof a.expires_in === "number"
        ? nowS + a.expires_in
        : nowS + 3600;
  const actRaw = typeof a.act === "string" ? a.act : typeof claims?.act === "string" ? claims.act : undefined;
  const act = actRaw === "human" ? "human" : "agent";
  confirmIdentity(a, claims, email);
  return {
    token,
    email,
    act,
    expiresAt,
    issuedAt:
      typeof claims?.iat === "number" ? claims.iat : typeof a.expires_in === "number" ? nowS : undefined,
    endpoints,
  };
}

/**
 * The identity is the one the user asked for: every identity the IdP's answer names (id, email, the
 * token's sub) must be exactly that one, and at least one must be there.
 */
function confirmIdentity(
  a: AuthenticateAnswer,
  claims: Record<string, unknown> | undefined,
  email: string,
): void {
  const named = [a.id, a.email, claims?.sub].filter((v) => v !== undefined);
  // Compared in their one normal form (protocol/names.ts); a refused name confirms nothing.
  const wanted = canonicalIdentity(email);
  const other = named.find((v) => wanted === undefined || canonicalIdentity(v) !== wanted);
  if (named.length > 0 && other === undefined) return;
  const shown = other === undefined ? "no identity" : visible(String(other), { max: 200 });
  throw new ClientError(
    "identity_mismatch",
    `login as ${visible(email)} failed: the IdP answered for ${shown}`,
    {
      email,
    },
  );
}

/** Unverified payload of a JWT (the client only reads its own token's exp/sub/act; the IdP verifies). */
export function decodeJwtPayload(token: string): Record<string, unknown> | undefined {
  try {
    return decodeJwt(token).payload;
  } catch {
    return undefined;
  }
}

function loginError(e: unknown, email: string): unknown {
  if (e instanceof HttpProblem && e.status >= 400 && e.status < 500 && e.status !== 429) {
    return new ClientError(
      "login_refused",
      `login as ${email} failed: ${firstLine(e.message)}`,
      { email },
      { cause: e },
    );
  }
  return e;
}

function firstLine(s: string): string {
  const i = s.indexOf(": ");
  return i >= 0 ? s.slice(i + 2) : s;
}
