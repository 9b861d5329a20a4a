import { CMD_HASH_PREFIX, cmdHash, isCanonicalCmdHash, legacyCmdHash } from "./cmd-hash.ts";
import { CLOCK_SKEW_S } from "./jwt.ts";

/**
 * The checks on an AuthZ-JWT's claims that every verifier makes the same way: the setuid path's
 * verifier (verifier/decide.ts) and the target side (client/verify-grant.ts, under `apes grants
 * verify`). Pure functions: claims (signature-verified, except for the issuer allow-list) in, the
 * first failure (one reason code and a detail a person can read) or undefined out. The order of the
 * calls is the caller's contract.
 */

export type AuthzReason =
  | "token_malformed"
  | "issuer_not_allowed"
  | "audience_not_allowed"
  | "token_expired"
  | "token_not_yet_valid"
  | "host_mismatch"
  | "command_mismatch"
  | "cmd_hash_mismatch"
  | "permission_missing"
  | "grant_not_usable";

export interface AuthzFailure {
  reason: AuthzReason;
  detail: string;
}

const fail = (reason: AuthzReason, detail: string): AuthzFailure => ({ reason, detail });

export const AUTHZ_GRANT_TYPES = ["once", "timed", "always"] as const;
export type AuthzGrantType = (typeof AUTHZ_GRANT_TYPES)[number];

/** The claims every AuthZ-JWT must have, with their types: a token missing one is malformed. */
export function checkAuthzShape(claims: Record<string, unknown>): AuthzFailure | undefined {
  for (const k of ["sub", "jti", "grant_id"] as const) {
    if (typeof claims[k] !== "string" || (claims[k] as string).length === 0)
      return fail("token_malformed", `the token has no ${k} claim`);
  }
  for (const k of ["exp", "iat"] as const) {
    if (typeof claims[k] !== "number" || !Number.isFinite(claims[k]))
      return fail("token_malformed", `the token has no numeric ${k} claim`);
  }
  if (claims.nbf !== undefined && (typeof claims.nbf !== "number" || !Number.isFinite(claims.nbf)))
    return fail("token_malformed", "nbf is not a number");
  const gt = claims.grant_type;
  if (typeof gt !== "string" || !(AUTHZ_GRANT_TYPES as readonly string[]).includes(gt))
    return fail("token_malformed", "grant_type is not once, timed or always");
  // `act` names the requester's kind (older IdPs send none); an object is a delegated token's actor.
  if (claims.act !== undefined && claims.act !== "agent" && claims.act !== "human")
    return fail("token_malformed", "act is not agent or human: not an AuthZ-JWT");
  return undefined;
}

/**
 * The issuer allow-list, checked on the UNVERIFIED `iss` before any network call: a token naming
 * another issuer never makes a verifier fetch anything from it. Returns the normalised issuer.
 */
export function checkIssuerAllowed(
  iss: unknown,
  allowed: readonly string[],
): { issuer: string } | AuthzFailure {
  if (typeof iss !== "string" || iss.length === 0)
    return fail("token_malformed", "the token has no iss claim");
  const issuer = iss.replace(/\/+$/, "");
  if (!allowed.includes(issuer))
    return fail("issuer_not_allowed", `issuer ${iss} is not allowed (allowed: ${allowed.join(", ")})`);
  return { issuer };
}

/**
 * The IdP's answer to `POST {grants}/{id}/consume`: only `consumed` (a once-grant, now spent) or
 * `valid` (timed/always) lets the holder through; anything else, a replay included, does not.
 */
export function checkConsumeAnswer(
  status: number,
  body: unknown,
  grantType: AuthzGrantType,
): AuthzFailure | undefined {
  const b = body && typeof body === "object" ? (body as Record<string, unknown>) : {};
  if (status >= 200 && status < 300 && !b.error) {
    const expected = grantType === "once" ? "consumed" : "valid";
    if (b.status === expected) return undefined;
    return fail(
      "grant_not_usable",
      `the IdP answered consume with status ${JSON.stringify(b.status ?? null)} (expected ${expected})`,
    );
  }
  const error = typeof b.error === "string" ? b.error : typeof b.title === "string" ? b.title : undefined;
  const detail = typeof b.detail === "string" ? `: ${b.detail}` : "";
  return fail(
    "grant_not_usable",
    `the IdP refused to consume the grant (${status} ${error ?? "error"}${detail})`,
  );
}

/** `aud` (a string or an array) names one of the accepted audiences. */
export function checkAudience(
  claims: Record<string, unknown>,
  accepted: readonly string[],
): AuthzFailure | undefined {
  const aud = claims.aud;
  const auds =
    typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud.filter((a) => typeof a === "string") : [];
  if (auds.length === 0) return fail("token_malformed", "the token has no aud claim");
  if (!auds.some((a) => accepted.includes(a)))
    return fail(
      "audience_not_allowed",
      `audience ${auds.join(",")} is not accepted (accepted: ${accepted.join(", ")})`,
    );
  return undefined;
}

/** exp, iat and nbf against `nowS` with the one clock-skew leeway (checkAuthzShape ran first). */
export function checkAuthzTimes(claims: Record<string, unknown>, nowS: number): AuthzFailure | undefined {
  const exp = claims.exp as number;
  const iat = claims.iat as number;
  if (nowS > exp + CLOCK_SKEW_S) return fail("token_expired", `the grant token expired at ${iso(exp)}`);
  if (iat > nowS + CLOCK_SKEW_S)
    return fail("token_not_yet_valid", `the grant token was issued in the future (${iso(iat)})`);
  if (typeof claims.nbf === "number" && claims.nbf > nowS + CLOCK_SKEW_S)
    return fail("token_not_yet_valid", `the grant token is not valid before ${iso(claims.nbf)}`);
  return undefined;
}

export function checkHost(claims: Record<string, unknown>, host: string): AuthzFailure | undefined {
  if (claims.target_host === host) return undefined;
  return fail(
    "host_mismatch",
    `the grant is for host ${JSON.stringify(claims.target_host ?? null)}, this host is ${JSON.stringify(host)}`,
  );
}

/**
 * The `command` claim equals argv element by element (the authority), and `cmd_hash`, when present,
 * matches too: the canonical `SHA-256:` form exactly, a legacy bare-hex hash only as a cross-check.
 */
export function checkCommand(
  claims: Record<string, unknown>,
  argv: readonly string[],
): AuthzFailure | undefined {
  const command = claims.command;
  if (!Array.isArray(command) || !command.every((c) => typeof c === "string"))
    return fail("command_mismatch", "the grant token carries no command claim");
  const mismatch = firstDifference(command as string[], argv);
  if (mismatch) return fail("command_mismatch", mismatch);
  const hash = claims.cmd_hash;
  if (hash === undefined) return undefined;
  if (typeof hash !== "string") return fail("cmd_hash_mismatch", "cmd_hash is not a string");
  if (hash.startsWith(CMD_HASH_PREFIX)) {
    const expected = cmdHash(argv);
    if (!isCanonicalCmdHash(hash) || hash !== expected)
      return fail(
        "cmd_hash_mismatch",
        `the grant's cmd_hash ${hash} does not match the command (${expected})`,
      );
  } else if (hash !== legacyCmdHash(argv)) {
    return fail("cmd_hash_mismatch", "the grant's legacy cmd_hash does not match the command");
  }
  return undefined;
}

/** Every required permission is in the token's `permissions` claim. */
export function checkPermissions(
  claims: Record<string, unknown>,
  required: readonly string[],
): AuthzFailure | undefined {
  if (required.length === 0) return undefined;
  const granted = Array.isArray(claims.permissions)
    ? claims.permissions.filter((p): p is string => typeof p === "string")
    : [];
  const missing = required.filter((p) => !granted.includes(p));
  if (missing.length === 0) return undefined;
  return fail(
    "permission_missing",
    `the grant does not include ${missing.map((p) => JSON.stringify(p)).join(", ")} (granted: ${granted.length ? granted.join(", ") : "none"})`,
  );
}

function firstDifference(granted: readonly string[], argv: readonly string[]): string | undefined {
  const n = Math.max(granted.length, argv.length);
  for (let i = 0; i < n; i++) {
    if (granted[i] !== argv[i]) {
      if (granted.length !== argv.length) {
        return `the grant is for ${JSON.stringify(granted)}, the command is ${JSON.stringify(argv)} (${granted.length} vs ${argv.length} arguments)`;
      }
      return `argument ${i} differs: the grant has ${JSON.stringify(granted[i])}, the command has ${JSON.stringify(argv[i])}`;
    }
  }
  return undefined;
}

function iso(s: number): string {
  const d = new Date(s * 1000);
  return Number.isNaN(d.getTime()) ? String(s) : d.toISOString().replace(".000Z", "Z");
}
