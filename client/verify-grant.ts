import {
  type AuthzGrantType,
  type AuthzReason,
  checkAudience,
  checkAuthzShape,
  checkAuthzTimes,
  checkCommand,
  checkConsumeAnswer,
  checkHost,
  checkIssuerAllowed,
  checkPermissions,
} from "../protocol/authz.ts";
import { JwksCache, type KeyStore } from "../protocol/jwks.ts";
import { type DecodedJwt, decodeJwt, JwtError, verifySignature } from "../protocol/jwt.ts";
import { type JsonHttp, requestJson } from "./http.ts";

/**
 * The target side of the grant flow (docs/protocol.md, section 3): a service checks the AuthZ-JWT
 * an agent presents before it acts. `apes grants verify` is a thin command over this; a Node
 * service imports it directly. Order:
 *   compact JWT -> issuer allow-list on the unverified iss (no network before this) -> alg pinned
 *   to EdDSA, kid -> discovery + JWKS of that issuer only (cached) -> signature -> the shared claim
 *   checks of protocol/authz.ts (shape, aud, exp/iat with the one leeway, host, permissions,
 *   command and cmd_hash) -> with `consume`, spend the grant at the IdP (a once-grant only once).
 * Every failure is one reason code; nothing is thrown for a bad token.
 */

export type GrantReason = AuthzReason | "signature_invalid" | "jwks_unavailable" | "idp_unreachable";

export interface VerifyGrantOptions {
  /** Issuers whose AuthZ-JWTs are accepted (their keys are fetched from nowhere else). */
  issuers: readonly string[];
  /** This service's name(s): the token's aud must be one of them. */
  audience: string | readonly string[];
  /** Every one must be granted. */
  permissions?: readonly string[];
  /** The exact argv about to run: the token's command must equal it, element by element. */
  command?: readonly string[];
  /** The token's target_host must be this. */
  host?: string;
  /** Spend the grant at the IdP: a once-grant is then used up (exactly one of concurrent spends wins). */
  consume?: boolean;
  /** GET/POST JSON; default: requestJson (bounded in time and size). */
  http?: JsonHttp;
  /** Keys cache (grantKeysCache); default: one per `http` function, kept for the process. */
  cache?: JwksCache;
  /** Unix seconds. */
  now?: () => number;
}

export type VerifyGrantResult =
  | { valid: true; claims: Record<string, unknown>; consumed?: "consumed" | "valid" }
  | {
      valid: false;
      reason: GrantReason;
      detail: string;
      /** Present once the signature verified. */
      claims?: Record<string, unknown>;
    };

const GRANTS_ENDPOINT = "openape_grants_endpoint";
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);

/** What is wrong with the options (a caller's mistake, not a token's), or undefined. */
export function verifyOptionsProblem(o: VerifyGrantOptions): string | undefined {
  if (!Array.isArray(o.issuers) || o.issuers.length === 0) return "name at least one issuer";
  for (const issuer of o.issuers) {
    let u: URL;
    try {
      u = new URL(issuer);
    } catch {
      return `issuer ${issuer} is not a URL`;
    }
    if (u.protocol !== "https:" && !(u.protocol === "http:" && LOOPBACK.has(u.hostname)))
      return `issuer ${issuer} must be https (plain http only on loopback)`;
  }
  const audiences = typeof o.audience === "string" ? [o.audience] : o.audience;
  if (!Array.isArray(audiences) || audiences.length === 0 || audiences.some((a) => !a))
    return "name this service's audience";
  if (o.permissions?.some((p) => !p)) return "a required permission is empty";
  if (o.command !== undefined && o.command.length === 0) return "the command is empty";
  if (o.host === "") return "the host is empty";
  return undefined;
}

/** The keys cache the verifier needs (it takes the grants endpoint along, for consume). */
/** `anchor`: what `http`'s connections trust (protocol/jwks-store.ts `trustAnchorId`), part of the cache key. */
export function grantKeysCache(http: JsonHttp, store?: KeyStore, anchor?: string): JwksCache {
  return new JwksCache({
    getJson: (url) => http(url),
    endpoints: [GRANTS_ENDPOINT],
    ...(store ? { store } : {}),
    ...(anchor ? { anchor } : {}),
  });
}

const caches = new WeakMap<JsonHttp, JwksCache>();

function cacheFor(http: JsonHttp): JwksCache {
  let cache = caches.get(http);
  if (!cache) {
    cache = grantKeysCache(http);
    caches.set(http, cache);
  }
  return cache;
}

const invalid = (reason: GrantReason, detail: string, claims?: Record<string, unknown>): VerifyGrantResult =>
  claims ? { valid: false, reason, detail, claims } : { valid: false, reason, detail };

export async function verifyAuthzJwt(jwt: string, options: VerifyGrantOptions): Promise<VerifyGrantResult> {
  const problem = verifyOptionsProblem(options);
  if (problem) throw new TypeError(`verifyAuthzJwt: ${problem}`);
  const http = options.http ?? requestJson;
  const cache = options.cache ?? cacheFor(http);
  const now = options.now ?? (() => Math.floor(Date.now() / 1000));
  const allowed = options.issuers.map((i) => i.replace(/\/+$/, ""));

  let d: DecodedJwt;
  try {
    d = decodeJwt(jwt);
  } catch (e) {
    return invalid("token_malformed", (e as Error).message);
  }
  const iss = checkIssuerAllowed(d.payload.iss, allowed);
  if ("reason" in iss) return invalid(iss.reason, iss.detail);
  // Pinned before any fetch: alg "none" or HS256 never costs the issuer a request.
  if (d.header.alg !== "EdDSA")
    return invalid(
      "signature_invalid",
      `alg ${JSON.stringify(d.header.alg ?? null)} is not accepted (EdDSA only)`,
    );
  const kid = d.header.kid;
  if (typeof kid !== "string" || kid === "")
    return invalid("signature_invalid", "the token header has no kid");

  let found: Awaited<ReturnType<JwksCache["lookup"]>>;
  try {
    found = await cache.lookup(iss.issuer, kid, now());
  } catch (e) {
    return invalid(
      "jwks_unavailable",
      `cannot get the signing keys of ${iss.issuer}: ${(e as Error).message}`,
    );
  }
  try {
    verifySignature(d, () => found.key);
  } catch (e) {
    if (!(e instanceof JwtError)) throw e;
    return invalid("signature_invalid", `${e.message} (issuer ${iss.issuer}, key ${kid})`);
  }
  const claims = d.payload;

  const audiences = typeof options.audience === "string" ? [options.audience] : options.audience;
  const failed =
    checkAuthzShape(claims) ??
    checkAudience(claims, audiences) ??
    checkAuthzTimes(claims, now()) ??
    (options.host !== undefined ? checkHost(claims, options.host) : undefined) ??
    checkPermissions(claims, options.permissions ?? []) ??
    (options.command !== undefined ? checkCommand(claims, options.command) : undefined);
  if (failed) return invalid(failed.reason, failed.detail, claims);
  if (!options.consume) return { valid: true, claims };

  const grantId = claims.grant_id as string;
  const url = `${found.meta.endpoints[GRANTS_ENDPOINT]}/${encodeURIComponent(grantId)}/consume`;
  let answer: Awaited<ReturnType<JsonHttp>>;
  try {
    answer = await http(url, { method: "POST", headers: { authorization: `Bearer ${jwt}` }, json: {} });
  } catch (e) {
    // Any failure to get an answer (an injected http may throw anything) fails closed.
    return invalid("idp_unreachable", `cannot spend the grant: ${(e as Error).message}`, claims);
  }
  if (answer.status >= 500)
    return invalid("idp_unreachable", `the IdP failed to spend the grant (${answer.status})`, claims);
  const grantType = claims.grant_type as AuthzGrantType;
  const refused = checkConsumeAnswer(answer.status, answer.body, grantType);
  if (refused) return invalid(refused.reason, refused.detail, claims);
  return { valid: true, claims, consumed: grantType === "once" ? "consumed" : "valid" };
}
