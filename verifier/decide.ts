import {
  type AuthzFailure,
  checkAudience,
  checkAuthzShape,
  checkAuthzTimes,
  checkCommand,
  checkConsumeAnswer,
  checkHost,
  checkIssuerAllowed,
} from "../protocol/authz.ts";
import { cmdHash } from "../protocol/cmd-hash.ts";
import { VERIFIER_REASONS, type VerifierReason } from "../protocol/elevation.ts";
import { CLOCK_SKEW_S, MAX_JWT_LENGTH } from "../protocol/jwt.ts";
import { DEFAULT_RUN_AS } from "../protocol/names.ts";
import type { AuthzClaims, GrantType } from "../protocol/types.ts";
import type { Policy } from "./policy.ts";

/**
 * The verifier's decision, as pure functions: (claims, request, policy, now) -> Allowed | Denied.
 * No I/O here; verifier/verify.ts does the effects (stdin, JWKS, signature, consume) around it.
 * The checks run in the order of the contract (docs/elevation.md), and each denial
 * names exactly one reason code, which ends up in the shim's audit line.
 */

/** The reasons of the shared claim checks that this verifier can meet (it checks no permissions). */
type ElevationAuthzReason = Exclude<AuthzFailure["reason"], "permission_missing">;

/** A denial names one of the verifier's codes (listed, with their exit statuses, in protocol/elevation.ts). */
export interface Denied {
  ok: false;
  reason: VerifierReason;
  detail: string;
}

/** The allowed verdict, exactly the flat object the shim reads. */
export interface Allowed {
  ok: true;
  grant_id: string;
  cmd_hash: string;
  run_as: string;
  sub: string;
  decided_by: string;
  issuer: string;
  grant_type: GrantType;
  jti: string;
}

export type Decision = Allowed | Denied;

/** The one JSON line the shim writes to the verifier's stdin. */
export interface VerifyRequest {
  jwt: string;
  argv: string[];
  cmd_hash: string;
  user: string;
  uid: number;
  run_as: string;
  /** Print timing lines on stderr (benchmarks). */
  timing: boolean;
}

/** Clock skew tolerated on exp, iat and nbf: the one leeway of protocol/jwt.ts. */
export const LEEWAY_S = CLOCK_SKEW_S;

export const deny = (reason: VerifierReason, detail: string): Denied => ({ ok: false, reason, detail });
const denied = (f: AuthzFailure): Denied => deny(f.reason as ElevationAuthzReason, f.detail);

export type VerifierExit = 0 | (typeof VERIFIER_REASONS)[VerifierReason]["exit"];

/** Exit status of the verifier for a decision: 0 allowed, else the reason's (protocol/elevation.ts). */
export function exitStatusFor(d: Decision): VerifierExit {
  return d.ok ? 0 : VERIFIER_REASONS[d.reason].exit;
}

const REQUEST_KEYS = new Set(["jwt", "argv", "cmd_hash", "user", "uid", "run_as", "timing"]);
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** Parses and checks the shim's request line. The hash must be the one we compute ourselves. */
export function parseRequest(line: string): VerifyRequest | Denied {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return deny("request_invalid", "the request line is not JSON");
  }
  if (!v || typeof v !== "object" || Array.isArray(v))
    return deny("request_invalid", "the request is not an object");
  const r = v as Record<string, unknown>;
  for (const k of Object.keys(r))
    if (!REQUEST_KEYS.has(k)) return deny("request_invalid", `unknown request field "${k}"`);
  if (typeof r.jwt !== "string" || r.jwt.length === 0) return deny("request_invalid", "jwt missing");
  if (!Array.isArray(r.argv) || r.argv.length === 0 || !r.argv.every((a) => typeof a === "string")) {
    return deny("request_invalid", "argv must be a non-empty array of strings");
  }
  const argv = r.argv as string[];
  if (!argv.every((a) => a.isWellFormed())) return deny("request_invalid", "argv is not well-formed Unicode");
  if (typeof r.user !== "string" || r.user.length === 0) return deny("request_invalid", "user missing");
  if (typeof r.uid !== "number" || !Number.isInteger(r.uid) || r.uid < 0)
    return deny("request_invalid", "uid missing");
  if (typeof r.run_as !== "string" || r.run_as.length === 0) return deny("request_invalid", "run_as missing");
  if (r.timing !== undefined && typeof r.timing !== "boolean")
    return deny("request_invalid", "timing must be a boolean");
  const expected = cmdHash(argv);
  if (r.cmd_hash !== expected) {
    return deny("request_invalid", `cmd_hash ${String(r.cmd_hash)} is not the hash of argv (${expected})`);
  }
  return {
    jwt: r.jwt,
    argv,
    cmd_hash: expected,
    user: r.user,
    uid: r.uid,
    run_as: r.run_as,
    timing: r.timing === true,
  };
}

/** Structural check of the (still unverified) token: three base64url parts. */
export function checkTokenShape(jwt: string): Denied | undefined {
  if (jwt.length > MAX_JWT_LENGTH || !JWT_SHAPE.test(jwt))
    return deny("token_malformed", "the grant token is not a compact JWT");
  return undefined;
}

/**
 * The issuer allow-list, checked on the UNVERIFIED claims before any network call: a token naming
 * another issuer never makes the verifier fetch anything from it.
 */
export function checkIssuer(iss: unknown, policy: Policy): { ok: true; issuer: string } | Denied {
  const r = checkIssuerAllowed(iss, policy.issuers);
  return "reason" in r ? denied(r) : { ok: true, issuer: r.issuer };
}

/**
 * Every check on the signature-verified claims, in the contract's order. `nowS` is Unix seconds.
 */
export function decide(
  raw: Record<string, unknown>,
  request: VerifyRequest,
  policy: Policy,
  nowS: number,
): Decision {
  // Shape first: a token missing what we check is malformed, not "mismatched".
  const shape = checkAuthzShape(raw);
  if (shape) return denied(shape);

  const issuer = checkIssuer(raw.iss, policy);
  if (!issuer.ok) return issuer;

  // Then the checks every verifier shares (protocol/authz.ts), in the contract's order. The command
  // claim is the authority; the hash is checked in addition, never instead.
  const shared =
    checkAudience(raw, policy.audiences) ??
    checkAuthzTimes(raw, nowS) ??
    checkHost(raw, policy.host) ??
    checkCommand(raw, request.argv);
  if (shared) return denied(shared);

  const claims = verifiedClaims(raw, issuer.issuer, policy.audiences);
  if ("ok" in claims) return claims;
  const sub = claims.sub;
  const decidedBy = claims.decided_by;
  if (decidedBy === undefined || decidedBy.length === 0) {
    return deny("approver_not_allowed", "the grant token names no approver (decided_by)");
  }
  if (!policy.approvers.includes(decidedBy)) {
    return deny(
      "approver_not_allowed",
      `${decidedBy} is not an approver in the policy (${policy.approvers.join(", ")})`,
    );
  }
  if (decidedBy === sub && !policy.allowSelfApproval) {
    return deny("self_approval", `${sub} approved its own grant; the policy requires another approver`);
  }

  const identities = Object.hasOwn(policy.users, request.user) ? policy.users[request.user] : undefined;
  if (!identities?.includes(sub)) {
    return deny("identity_not_mapped", `${sub} is not mapped to the Unix user ${request.user} in the policy`);
  }

  const runAs = claims.run_as ?? DEFAULT_RUN_AS;
  if (runAs !== request.run_as) {
    return deny(
      "run_as_not_allowed",
      `the grant is for running as ${runAs}, the request is for ${request.run_as}`,
    );
  }
  if (!policy.runAs.includes(runAs)) {
    return deny(
      "run_as_not_allowed",
      `running as ${runAs} is not allowed by the policy (${policy.runAs.join(", ")})`,
    );
  }

  return {
    ok: true,
    grant_id: claims.grant_id,
    cmd_hash: request.cmd_hash,
    run_as: runAs,
    sub,
    decided_by: decidedBy,
    issuer: claims.iss,
    grant_type: claims.grant_type,
    jti: claims.jti,
  };
}

/**
 * The claims as the wire type, parsed once the shared checks have passed (they established sub, jti,
 * grant_id, grant_type, exp, iat, target_host, aud and command); the two claims left to type keep the
 * reason of their check. `iss` is the normalised issuer, `aud` the accepted audience.
 */
function verifiedClaims(
  c: Record<string, unknown>,
  issuer: string,
  audiences: readonly string[],
): AuthzClaims | Denied {
  if (c.decided_by !== undefined && typeof c.decided_by !== "string")
    return deny("approver_not_allowed", "the grant token names no approver (decided_by)");
  if (c.run_as !== undefined && typeof c.run_as !== "string") {
    return deny("run_as_not_allowed", `the grant's run_as ${JSON.stringify(c.run_as)} is not a user name`);
  }
  const aud =
    typeof c.aud === "string" ? c.aud : (c.aud as unknown[]).find((a) => audiences.includes(a as string));
  return {
    iss: issuer,
    sub: c.sub as string,
    aud: aud as string,
    target_host: c.target_host as string,
    iat: c.iat as number,
    exp: c.exp as number,
    jti: c.jti as string,
    grant_id: c.grant_id as string,
    grant_type: c.grant_type as GrantType,
    act: c.act as AuthzClaims["act"],
    command: c.command as string[],
    ...(typeof c.cmd_hash === "string" ? { cmd_hash: c.cmd_hash } : {}),
    ...(c.run_as !== undefined ? { run_as: c.run_as } : {}),
    ...(c.decided_by !== undefined ? { decided_by: c.decided_by } : {}),
  };
}

/** Maps the IdP's consume answer to a decision: only consumed (once) or valid (timed/always) allow. */
export function verdictFromConsume(status: number, body: unknown, allowed: Allowed): Decision {
  const refused = checkConsumeAnswer(status, body, allowed.grant_type);
  return refused ? denied(refused) : allowed;
}
