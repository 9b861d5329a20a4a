import type { KeyObject } from "node:crypto";
import { emailDomain } from "../protocol/ddisa.ts";
import { normalizeIssuer } from "../protocol/jwks.ts";
import { CLOCK_SKEW_S, checkClaims, decodeJwt, JwtError, verifySignature } from "../protocol/jwt.ts";
import { canonicalIdentity } from "../protocol/names.ts";

/**
 * The SP's checks of the assertion the IdP's token endpoint returns (docs/protocol.md section 2), in
 * order: a compact JWT, alg pinned to EdDSA with a kid, the key for that kid from the discovered
 * IdP's JWKS (looked up by the caller, after the unverified header named it), the signature, exp /
 * nbf / iat with the one leeway, iss = the IdP the domain's DDISA record named, aud = this SP's
 * client_id, the nonce this SP put in the authorization request, a lifetime of at most 300 s, an
 * `act` this SP accepts, and a `sub` that is an identity of the domain whose record named this IdP
 * (an IdP is trusted only for the domains that point at it). Every failure is one reason code.
 */

/** PROTOCOL section 2: exp - iat <= 300. */
export const MAX_ASSERTION_LIFETIME_S = 300;

export type Act = "human" | "agent";

export type AssertionReason =
  | "malformed"
  | "alg"
  | "unknown_kid"
  | "signature"
  | "expired"
  | "not_yet_valid"
  | "issuer"
  | "audience"
  | "nonce"
  | "lifetime"
  | "act_missing"
  | "act_unknown"
  | "sub"
  | "domain";

export interface AssertionExpect {
  /** The IdP the DDISA record named (normalized issuer URL). */
  issuer: string;
  clientId: string;
  nonce: string;
  /** The email domain whose record named the IdP. */
  domain: string;
  /** Unix seconds. */
  now: number;
  /** Actors this SP signs in; default human and agent (equals, neither a special case). */
  acts?: readonly Act[];
  leeway?: number;
}

export type AssertionResult =
  | { ok: true; sub: string; act: Act; claims: Record<string, unknown> }
  | { ok: false; reason: AssertionReason; detail: string };

const fail = (reason: AssertionReason, detail: string): AssertionResult => ({ ok: false, reason, detail });

/** The unverified header's kid (to look the key up), or undefined. */
export function assertionKid(token: string): string | undefined {
  try {
    const kid = decodeJwt(token).header.kid;
    return typeof kid === "string" && kid !== "" && kid.length <= 200 ? kid : undefined;
  } catch {
    return undefined;
  }
}

/** Every check above; `key` is what the IdP's JWKS holds for the header's kid (undefined: none). */
export function checkAssertion(
  token: unknown,
  key: KeyObject | undefined,
  expect: AssertionExpect,
): AssertionResult {
  if (typeof token !== "string") return fail("malformed", "the token answer has no assertion");
  let payload: Record<string, unknown>;
  try {
    const d = decodeJwt(token);
    verifySignature(d, () => key);
    checkClaims(d.payload, {
      now: expect.now,
      issuer: normalizeIssuer(expect.issuer),
      audience: expect.clientId,
      leeway: expect.leeway ?? CLOCK_SKEW_S,
    });
    payload = d.payload;
  } catch (e) {
    if (!(e instanceof JwtError)) throw e;
    return fail(e.reason === "claims" ? "malformed" : e.reason, e.message);
  }
  // One audience only: an assertion also meant for another party could be replayed there.
  if (Array.isArray(payload.aud) && payload.aud.length !== 1)
    return fail("audience", "the assertion names more than one audience");
  if (typeof payload.nonce !== "string" || payload.nonce !== expect.nonce)
    return fail("nonce", "the assertion's nonce is not the one this sign-in sent");
  if (typeof payload.iat !== "number" || (payload.exp as number) - payload.iat > MAX_ASSERTION_LIFETIME_S)
    return fail("lifetime", `the assertion lives longer than ${MAX_ASSERTION_LIFETIME_S} s`);
  if (payload.act === undefined) return fail("act_missing", "the assertion has no act");
  const acts = expect.acts ?? ["human", "agent"];
  if (typeof payload.act !== "string" || !(acts as readonly string[]).includes(payload.act))
    return fail("act_unknown", `act must be one of ${acts.join(", ")}`);
  const sub = canonicalIdentity(payload.sub);
  if (sub === undefined) return fail("sub", "the assertion's sub is not an identity");
  let domain: string;
  try {
    domain = emailDomain(sub);
  } catch {
    return fail("sub", "the assertion's sub is not an email address");
  }
  if (domain !== expect.domain)
    return fail("domain", "the IdP asserted an identity of a domain whose DDISA record does not name it");
  return { ok: true, sub, act: payload.act as Act, claims: payload };
}
