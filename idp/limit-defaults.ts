/**
 * The IdP's rate-limit classes and their defaults, in a module that imports nothing: the command
 * tree that every `apes` start builds shows them in `apes idp serve --help`, and must not load the
 * IdP to do so (idp/limits.ts has the rest).
 *
 * Endpoint classes with their own token bucket: `login` (challenge and authenticate) and `token`
 * count per client address; `api` counts per identity for authenticated requests and per client
 * address for the others (discovery, consume) and for every bearer token not yet verified.
 */
export type LimitClass = "login" | "token" | "api";
export const DEFAULT_RATE_LIMITS: Readonly<Record<LimitClass, string>> = {
  login: "60/1m",
  token: "120/1m",
  api: "1200/1m",
};
