/**
 * What an identity's Ed25519 key signs (docs/signatures.md). A key that signed whatever bytes an IdP
 * asked for would be a signing oracle: a hostile IdP could relay another IdP's challenge, or the
 * signing input of a client-assertion JWT, and log in there as the user. So the signed bytes name the
 * format, the purpose and the audience (the IdP's issuer as the client discovered it), and every field
 * is plain text that cannot contain the separator:
 *
 *   "apes-signature-v1" LF purpose LF issuer LF id LF challenge
 *
 * The line feed can never occur in a JWT signing input (base64url and "."), so no message built here
 * verifies as a JWT, and a plain challenge holds no "." so no raw login signature can be one either.
 */

/** The format an IdP advertises in discovery (`apes_auth_signature_formats_supported`). */
export const SIGNATURE_FORMAT_V1 = "apes-signature-v1";
/** The older form: the raw challenge bytes signed as they are. Opt-in at both ends, never the default. */
export const SIGNATURE_FORMAT_RAW = "raw";
/** The discovery field listing the formats an IdP verifies. */
export const SIGNATURE_FORMATS_FIELD = "apes_auth_signature_formats_supported";

/** `login`: a login challenge; `approve`: an approval digest (protocol/approval.ts). */
export type SignaturePurpose = "login" | "approve";

/** Challenges a key will sign: bounded, no separators, no "." (never a JWT signing input). */
const PLAIN_CHALLENGE = /^[A-Za-z0-9_~+/=-]{16,256}$/;

export function isPlainChallenge(challenge: unknown): challenge is string {
  return typeof challenge === "string" && PLAIN_CHALLENGE.test(challenge);
}

/** Issuer and id: printable, no line feed or other control character, bounded. */
function plainField(name: string, value: string, max: number): string {
  if (value.length === 0 || value.length > max || /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(value)) {
    throw new SignatureInputError(`${name} cannot be part of a signed message`);
  }
  return value;
}

export class SignatureInputError extends Error {
  override name = "SignatureInputError";
}

/**
 * The UTF-8 bytes a key signs for `purpose` at the IdP `issuer` (no trailing slash), for the identity
 * `id` exactly as sent in the request, over the IdP's `challenge`. Throws SignatureInputError when a
 * field could make the message ambiguous.
 */
export function signingInput(
  purpose: SignaturePurpose,
  issuer: string,
  id: string,
  challenge: string,
): Buffer {
  if (!isPlainChallenge(challenge)) throw new SignatureInputError("the challenge is not plain");
  const lines = [
    SIGNATURE_FORMAT_V1,
    purpose,
    plainField("the issuer", issuer, 2048),
    plainField("the id", id, 254),
    challenge,
  ];
  return Buffer.from(lines.join("\n"), "utf8");
}

/** The formats a discovery document advertises (none: an older IdP that only knows raw). */
export function advertisedFormats(doc: Record<string, unknown>): string[] {
  const v = doc[SIGNATURE_FORMATS_FIELD];
  return Array.isArray(v) ? v.filter((f): f is string => typeof f === "string") : [];
}
