import type { KeyObject } from "node:crypto";
import { type ClaimChecks, checkClaims, decodeJwt, verifySignature } from "../protocol/jwt.ts";
import { ProblemError } from "../protocol/problem.ts";
import type { Call } from "./http.ts";

/** The token of `Authorization: Bearer <token>`; 401 without one, invalid_token when malformed. */
export function bearerToken(call: Call): string {
  const h = call.req.headers.authorization;
  if (!h) throw new ProblemError("unauthorized", "send Authorization: Bearer <token>");
  const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(h);
  if (!m) throw new ProblemError("invalid_token", "malformed Authorization header (expected Bearer)");
  return m[1]!;
}

export interface BearerChecks {
  /** The verification key for a kid at `now`; undefined: not a key of ours (a store may answer later). */
  keyFor(kid: string, now: number): KeyObject | undefined | Promise<KeyObject | undefined>;
  /** Unix seconds. */
  now(): number;
  /** The claim checks besides the time (`now` is filled in per call). */
  claims: Omit<ClaimChecks, "now">;
  /** Further checks on verified claims (e.g. required claims); throws a JwtError to refuse. */
  accept?(claims: Record<string, unknown>): void;
}

/**
 * Verifies bearer JWTs through protocol/jwt.ts. Verified token strings are cached until their exp,
 * so a client's repeated requests cost a map lookup instead of a signature check; what may change
 * behind a token (an account disabled, a delegation revoked) is the app's to re-check per request.
 */
export class BearerVerifier {
  private readonly cache = new Map<string, Record<string, unknown>>();
  private readonly checks: BearerChecks;
  private readonly maxCached: number;
  constructor(checks: BearerChecks, maxCached = 50_000) {
    this.checks = checks;
    this.maxCached = maxCached;
  }

  /** True when `token` was verified before and has not expired (no signature check needed). */
  verified(token: string): boolean {
    return ((this.cache.get(token)?.exp as number | undefined) ?? 0) > this.checks.now();
  }

  /** The token's claims; rejects with a JwtError. */
  async claims(token: string): Promise<Record<string, unknown>> {
    const now = this.checks.now();
    const cached = this.cache.get(token);
    if (cached) {
      if ((cached.exp as number) > now) return cached;
      this.cache.delete(token);
    }
    const d = decodeJwt(token);
    const kid = typeof d.header.kid === "string" && d.header.kid !== "" ? d.header.kid : undefined;
    const key = kid === undefined ? undefined : await this.checks.keyFor(kid, now);
    verifySignature(d, () => key);
    const claims = d.payload;
    checkClaims(claims, { ...this.checks.claims, now });
    this.checks.accept?.(claims);
    if (this.cache.size >= this.maxCached) this.cache.clear();
    this.cache.set(token, claims);
    return claims;
  }
}
