import { PATHS } from "./routes/discovery.ts";
import { WEB_CREDENTIAL_PATHS } from "./web/paths.ts";

/**
 * The IdP's rate-limit classes (README "Limits and errors" lists them); the connection caps and
 * request deadlines every server shares are in server/limits.ts.
 */

export { DEFAULT_RATE_LIMITS, type LimitClass } from "./limit-defaults.ts";

import type { LimitClass } from "./limit-defaults.ts";

const LOGIN_PATHS: ReadonlySet<string> = new Set([
  PATHS.challenge,
  PATHS.authenticate,
  PATHS.agentChallenge,
  PATHS.agentAuthenticate,
  ...WEB_CREDENTIAL_PATHS,
  // Typing user codes is guessing for an attacker: limited like a login.
  PATHS.device,
]);

const TOKEN_PATHS: ReadonlySet<string> = new Set([PATHS.token, PATHS.deviceAuthorization, PATHS.revoke]);

export function limitClassOf(path: string): LimitClass {
  if (LOGIN_PATHS.has(path)) return "login";
  if (TOKEN_PATHS.has(path)) return "token";
  return "api";
}
