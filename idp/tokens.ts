/**
 * The IdP's names for the JWT core (protocol/jwt.ts): one implementation for every part of apes.
 * The IdP checks only tokens it signed itself, on its own clock, so it passes `leeway: 0`.
 */
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
