/**
 * The IdP's names for the JWT core (protocol/jwt.ts): one implementation for every part of apes.
 * The IdP checks only tokens it signed itself, on its own clock, so it passes `leeway: 0`.
 */
import { type SigningKey, signJwtAsync } from "../protocol/jwt.ts";
import { ed25519Sign } from "../server/offload.ts";

export {
  type ClaimChecks as VerifyOptions,
  checkClaims,
  type DecodedJwt,
  decodeJwt,
  JwtError as TokenError,
  type SigningKey,
  signJwt,
  verifyJwt,
  verifySignature,
} from "../protocol/jwt.ts";

/** How the IdP signs a token it issues: off the event loop while other requests wait (server/offload.ts). */
export function signToken(payload: Record<string, unknown>, key: SigningKey, typ?: string): Promise<string> {
  return signJwtAsync(payload, key, ed25519Sign, typ);
}
