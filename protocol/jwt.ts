import { createPublicKey, type KeyObject, sign, verify } from "node:crypto";

/**
 * Compact EdDSA JWTs, the one implementation for every part of apes (the IdP signs and checks its
 * own tokens, the verifier and target services check AuthZ-JWTs, the CLI reads claims). node:crypto
 * directly: about twice as fast as jose, and no WebCrypto key import on the hot path.
 *
 * Parsing is strict: at most MAX_JWT_LENGTH characters, exactly three base64url parts, a JSON object
 * header and payload. Verification pins `alg` to EdDSA, needs a `kid`, and accepts only an Ed25519
 * key and a 64-byte signature. Time checks use one leeway for tokens from another machine's clock
 * (CLOCK_SKEW_S); a party checking tokens it signed itself passes `leeway: 0`.
 */

/** Largest token accepted anywhere (an AuthZ-JWT carries the command, so this bounds it too). */
export const MAX_JWT_LENGTH = 16 * 1024;

/** Clock skew tolerated on exp, nbf and iat when the token comes from another machine's clock. */
export const CLOCK_SKEW_S = 60;

export type JwtErrorReason =
  | "malformed"
  | "alg"
  | "unknown_kid"
  | "signature"
  | "expired"
  | "not_yet_valid"
  | "issuer"
  | "audience"
  | "claims";

export class JwtError extends Error {
  readonly reason: JwtErrorReason;
  constructor(reason: JwtErrorReason, message: string) {
    super(message);
    this.name = "JwtError";
    this.reason = reason;
  }
}

/** An Ed25519 public key as a JWK (the only kind of key apes signs or accepts). */
export interface Jwk {
  kty: "OKP";
  crv: "Ed25519";
  x: string;
  kid: string;
  alg: "EdDSA";
  use: "sig";
}

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function b64json(value: unknown): string {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64url");
}

/** The header and payload part of a JWT; the header names the key's kid (a client assertion, identified by iss, has none). */
function jwtSigningInput(payload: Record<string, unknown>, kid: string | undefined, typ: string): string {
  const header = kid === undefined ? { alg: "EdDSA", typ } : { alg: "EdDSA", typ, kid };
  return `${b64json(header)}.${b64json(payload)}`;
}

/** Signs with EdDSA. */
export function signJwt(
  payload: Record<string, unknown>,
  key: { kid?: string; privateKey: KeyObject },
  typ = "JWT",
): string {
  const input = jwtSigningInput(payload, key.kid, typ);
  return `${input}.${sign(null, Buffer.from(input, "latin1"), key.privateKey).toString("base64url")}`;
}

/** signJwt with the signature made by `signBytes` (a server's signer off its event loop, server/offload.ts). */
export async function signJwtAsync(
  payload: Record<string, unknown>,
  key: { kid?: string; privateKey: KeyObject },
  signBytes: (data: Buffer, key: KeyObject) => Promise<Buffer>,
  typ = "JWT",
): Promise<string> {
  const input = jwtSigningInput(payload, key.kid, typ);
  return `${input}.${(await signBytes(Buffer.from(input, "latin1"), key.privateKey)).toString("base64url")}`;
}

export interface DecodedJwt {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  signingInput: string;
  signature: Buffer;
}

function parsePart(part: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    throw new JwtError("malformed", `the token ${what} is not base64url JSON`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new JwtError("malformed", `the token ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** Splits and parses without verifying anything: read claims only after `verifyJwt`. */
export function decodeJwt(token: string): DecodedJwt {
  if (typeof token !== "string" || token.length > MAX_JWT_LENGTH)
    throw new JwtError("malformed", "not a JWT");
  const parts = token.split(".");
  if (parts.length !== 3 || !parts.every((p) => B64URL.test(p))) {
    throw new JwtError("malformed", "not a compact JWT (three base64url parts)");
  }
  return {
    header: parsePart(parts[0]!, "header"),
    payload: parsePart(parts[1]!, "payload"),
    signingInput: `${parts[0]}.${parts[1]}`,
    signature: Buffer.from(parts[2]!, "base64url"),
  };
}

/** The public key of an Ed25519 JWK, or undefined for anything else (other kty/crv, bad x). */
export function publicKeyFromJwk(jwk: unknown): KeyObject | undefined {
  const k = jwk as Partial<Jwk> | null;
  if (!k || typeof k !== "object" || k.kty !== "OKP" || k.crv !== "Ed25519") return undefined;
  if (typeof k.x !== "string" || !/^[A-Za-z0-9_-]{43}$/.test(k.x)) return undefined;
  if (k.alg !== undefined && k.alg !== "EdDSA") return undefined;
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: k.x }, format: "jwk" });
  } catch {
    return undefined;
  }
}

/** Checks alg and kid of the header and the signature with the key `keyFor` finds for the kid. */
export function verifySignature(d: DecodedJwt, keyFor: (kid: string) => KeyObject | undefined): void {
  if (d.header.alg !== "EdDSA") throw new JwtError("alg", `unsupported alg ${String(d.header.alg)}`);
  // Extensions that change what is signed or must be understood are never accepted (RFC 7515, 7797).
  if (d.header.crit !== undefined || d.header.b64 !== undefined)
    throw new JwtError("malformed", "the token header uses crit/b64, which is not accepted");
  if (typeof d.header.kid !== "string" || d.header.kid === "")
    throw new JwtError("unknown_kid", "the token header has no kid");
  const key = keyFor(d.header.kid);
  if (!key) throw new JwtError("unknown_kid", "the token was not signed by a known key");
  if (key.asymmetricKeyType !== "ed25519") throw new JwtError("alg", "the key is not an Ed25519 key");
  if (d.signature.length !== 64 || !verify(null, Buffer.from(d.signingInput, "latin1"), key, d.signature)) {
    throw new JwtError("signature", "invalid token signature");
  }
}

export interface ClaimChecks {
  now: number;
  issuer?: string;
  /** Accepted audiences: the token's aud (a string or an array) must contain one. */
  audience?: string | readonly string[];
  /** Clock skew in seconds for exp/nbf/iat; CLOCK_SKEW_S unless the checker signed the token. */
  leeway?: number;
}

/** exp (required), nbf and iat, then iss and aud when asked for. */
export function checkClaims(p: Record<string, unknown>, opts: ClaimChecks): void {
  const leeway = opts.leeway ?? CLOCK_SKEW_S;
  if (typeof p.exp !== "number" || !Number.isFinite(p.exp))
    throw new JwtError("claims", "the token has no exp");
  if (p.exp + leeway <= opts.now) throw new JwtError("expired", "the token has expired");
  if (p.nbf !== undefined && (typeof p.nbf !== "number" || p.nbf - leeway > opts.now)) {
    throw new JwtError("not_yet_valid", "the token is not valid yet");
  }
  if (p.iat !== undefined && (typeof p.iat !== "number" || p.iat - leeway > opts.now)) {
    throw new JwtError("not_yet_valid", "the token was issued in the future");
  }
  if (opts.issuer !== undefined && p.iss !== opts.issuer) throw new JwtError("issuer", "wrong token issuer");
  if (opts.audience !== undefined) {
    const want: readonly string[] = typeof opts.audience === "string" ? [opts.audience] : opts.audience;
    const aud = typeof p.aud === "string" ? [p.aud] : Array.isArray(p.aud) ? p.aud : [];
    if (!aud.some((a) => typeof a === "string" && want.includes(a)))
      throw new JwtError("audience", "wrong token audience");
  }
}

/** Decode, signature, then the claim checks; returns the payload. */
export function verifyJwt(
  token: string,
  keyFor: (kid: string) => KeyObject | undefined,
  opts: ClaimChecks,
): Record<string, unknown> {
  const d = decodeJwt(token);
  verifySignature(d, keyFor);
  checkClaims(d.payload, opts);
  return d.payload;
}
