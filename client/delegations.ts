import { randomUUID } from "node:crypto";
import { signJwt } from "../protocol/jwt.ts";
import type { Grant, GrantType } from "../protocol/types.ts";
import type { ClientContext } from "./context.ts";
import { idpEndpoints, requireEndpoint } from "./discovery.ts";
import { ClientError, HttpProblem } from "./errors.ts";
import { authed, checkGrantId, unexpectedAnswer } from "./grants.ts";
import { request } from "./http.ts";

/**
 * Delegations (docs/protocol.md, section 4) and RFC 8693 token exchange on them. Endpoints come from
 * discovery (`openape_delegations_endpoint`, `token_endpoint`).
 */

export const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
export const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
export const JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

export interface NewDelegation {
  delegate: string;
  audience: string;
  scopes?: string[];
  grant_type: GrantType;
  duration?: number;
}

export interface ExchangeResult {
  access_token: string;
  issued_token_type?: string;
  token_type?: string;
  expires_in?: number;
  /** Which form the IdP accepted. */
  method: "token-exchange" | "client-credentials";
}

export async function delegationsApi(ctx: ClientContext) {
  const auth = await authed(ctx);
  const endpoints = await idpEndpoints(ctx, auth.session().idp);
  const base = requireEndpoint(
    endpoints,
    endpoints.delegationsEndpoint,
    "openape_delegations_endpoint",
  ).replace(/\/+$/, "");
  const asGrant = (body: unknown): Grant => {
    const b = body as Record<string, unknown> | undefined;
    if (b && typeof b.id === "string") return b as unknown as Grant;
    if (b?.grant && typeof b.grant === "object") return b.grant as Grant;
    if (b?.delegation && typeof b.delegation === "object") return b.delegation as Grant;
    throw unexpectedAnswer("the IdP answered with something that is not a delegation");
  };
  return {
    auth,
    endpoints,
    async create(d: NewDelegation): Promise<Grant> {
      const res = await auth.call<unknown>({ url: base, method: "POST", json: d });
      return asGrant(res.body);
    },
    async list(role?: "delegator" | "delegate"): Promise<Grant[]> {
      const res = await auth.call<{ data?: Grant[] } | Grant[]>({
        url: role ? `${base}?role=${role}` : base,
      });
      const body = res.body;
      return Array.isArray(body) ? body : (body?.data ?? []);
    },
    async revoke(id: string): Promise<Grant | undefined> {
      const res = await auth.call<unknown>({
        url: `${base}/${encodeURIComponent(checkGrantId(id))}`,
        method: "DELETE",
      });
      return res.body && typeof res.body === "object" ? asGrant(res.body) : undefined;
    },
  };
}

/**
 * Exchanges my session for a token that acts for the delegator: RFC 8693 with delegation_grant_id
 * and my session token as actor_token; when the IdP answers unsupported_grant_type, the older
 * client_credentials form with an Ed25519 client_assertion signed by my key.
 */
export async function exchangeToken(
  ctx: ClientContext,
  delegationId: string,
  audience: string,
): Promise<ExchangeResult> {
  checkGrantId(delegationId);
  const auth = await authed(ctx);
  const session = auth.session();
  const endpoints = await idpEndpoints(ctx, session.idp);
  const tokenUrl = requireEndpoint(endpoints, endpoints.tokenEndpoint, "token_endpoint");
  try {
    const res = await request<Omit<ExchangeResult, "method">>(ctx, {
      url: tokenUrl,
      form: {
        grant_type: TOKEN_EXCHANGE,
        actor_token: session.token,
        actor_token_type: JWT_TOKEN_TYPE,
        delegation_grant_id: delegationId,
        audience,
        requested_token_type: JWT_TOKEN_TYPE,
      },
    });
    return { ...checkTokenAnswer(res.body), method: "token-exchange" };
  } catch (e) {
    if (!(e instanceof HttpProblem) || e.code !== "unsupported_grant_type") throw e;
    ctx.debug(
      "token exchange: IdP does not support RFC 8693; trying client_credentials with a client assertion",
    );
  }
  if (!session.keyPath) {
    throw new ClientError(
      "exchange_needs_key",
      "this IdP only offers the client_credentials form, which needs your private key",
      { email: session.email },
    );
  }
  const { loadPrivateKey } = await import("./keys.ts");
  const key = await loadPrivateKey(ctx, session.keyPath, { email: session.email });
  const iat = Math.floor(ctx.clock.now() / 1000);
  const assertion = signEdDsaJwt(
    { iss: session.email, sub: session.email, aud: tokenUrl, jti: randomUUID(), iat, exp: iat + 60 },
    key.key,
  );
  const res = await request<Omit<ExchangeResult, "method">>(ctx, {
    url: tokenUrl,
    form: {
      grant_type: "client_credentials",
      client_assertion_type: JWT_BEARER_ASSERTION,
      client_assertion: assertion,
      delegation_grant: delegationId,
      audience,
    },
  });
  return { ...checkTokenAnswer(res.body), method: "client-credentials" };
}

/**
 * Exchanges my own session token for a token at an SP audience (RFC 8693 with subject_token, no
 * delegation): same sub and act, aud = the SP (docs/control-plane.md, "Tokens").
 */
export async function exchangeOwnToken(ctx: ClientContext, audience: string): Promise<ExchangeResult> {
  const auth = await authed(ctx);
  const session = auth.session();
  const endpoints = await idpEndpoints(ctx, session.idp);
  const tokenUrl = requireEndpoint(endpoints, endpoints.tokenEndpoint, "token_endpoint");
  const res = await request<Omit<ExchangeResult, "method">>(ctx, {
    url: tokenUrl,
    form: {
      grant_type: TOKEN_EXCHANGE,
      subject_token: session.token,
      subject_token_type: JWT_TOKEN_TYPE,
      audience,
      requested_token_type: JWT_TOKEN_TYPE,
    },
  });
  return { ...checkTokenAnswer(res.body), method: "token-exchange" };
}

function checkTokenAnswer(body: unknown): Omit<ExchangeResult, "method"> {
  const b = body as Record<string, unknown> | undefined;
  if (!b || typeof b.access_token !== "string") {
    throw unexpectedAnswer("the IdP's token endpoint answered without an access_token");
  }
  return b as unknown as Omit<ExchangeResult, "method">;
}

/** A client assertion: an EdDSA JWT signed with the identity's own key (no kid: iss names the key). */
export function signEdDsaJwt(payload: Record<string, unknown>, key: import("node:crypto").KeyObject): string {
  return signJwt(payload, { privateKey: key });
}
