import { createHash, timingSafeEqual } from "node:crypto";

/**
 * PKCE (RFC 7636), S256 only: `plain` would hand the verifier to whoever sees the authorization
 * request. The verifier is 43-128 unreserved characters; the challenge is BASE64URL(SHA-256(verifier)),
 * always 43 characters.
 */

export const PKCE_METHOD = "S256";

const VERIFIER = /^[A-Za-z0-9._~-]{43,128}$/;
const CHALLENGE = /^[A-Za-z0-9_-]{43}$/;

export function isCodeVerifier(v: unknown): v is string {
  return typeof v === "string" && VERIFIER.test(v);
}

export function isCodeChallenge(c: unknown): c is string {
  return typeof c === "string" && CHALLENGE.test(c);
}

export function s256(verifier: string): string {
  return createHash("sha256").update(verifier, "ascii").digest("base64url");
}

/** Does `verifier` prove the `challenge` (constant-time compare)? */
export function verifierMatches(verifier: string, challenge: string): boolean {
  if (!isCodeVerifier(verifier) || !isCodeChallenge(challenge)) return false;
  const a = Buffer.from(s256(verifier));
  const b = Buffer.from(challenge);
  return a.length === b.length && timingSafeEqual(a, b);
}
