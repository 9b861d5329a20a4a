import { PATHS } from "./routes/discovery.ts";

/**
 * The IdP's rate-limit classes (README "Limits and errors" lists them); the connection caps and
 * request deadlines every server shares are in server/limits.ts.
 */

/**
 * Endpoint classes with their own token bucket. `login` (challenge and authenticate) and `token`
 * count per client address; `api` counts per identity for authenticated requests and per client
 * address for the others (discovery, consume) and for every bearer token not yet verified.
 */
export type LimitClass = "login" | "token" | "api";
export const DEFAULT_RATE_LIMITS: Readonly<Record<LimitClass, string>> = {
  login: "60/1m",
  token: "120/1m",
  api: "1200/1m",
};

const LOGIN_PATHS: ReadonlySet<string> = new Set([
  PATHS.challenge,
  PATHS.authenticate,
  PATHS.agentChallenge,
  PATHS.agentAuthenticate,
]);

export function limitClassOf(path: string): LimitClass {
  if (LOGIN_PATHS.has(path)) return "login";
  if (path === PATHS.token) return "token";
  return "api";
}
