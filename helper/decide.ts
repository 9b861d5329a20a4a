import { CMD_HASH_PREFIX, cmdHash, isCanonicalCmdHash, legacyCmdHash } from "../protocol/cmd-hash.ts";
import type { Policy } from "./policy.ts";

/**
 * The verifier's decision, as pure functions: (claims, request, policy, now) -> Allowed | Denied.
 * No I/O here; helper/verify.ts does the effects (stdin, JWKS, signature, consume) around it.
 * The checks run in the order of the contract (docs/elevation.md), and each denial
 * names exactly one reason code, which ends up in the shim's audit line.
 */

export type ReasonCode =
  | "config_invalid"
  | "request_invalid"
  | "token_malformed"
  | "issuer_not_allowed"
  | "jwks_unavailable"
  | "signature_invalid"
  | "audience_not_allowed"
  | "token_expired"
  | "token_not_yet_valid"
  | "host_mismatch"
  | "command_mismatch"
  | "cmd_hash_mismatch"
  | "approver_not_allowed"
  | "self_approval"
  | "identity_not_mapped"
  | "run_as_not_allowed"
  | "grant_not_usable"
  | "idp_unreachable";

export interface Denied {
  ok: false;
  reason: ReasonCode;
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
  grant_type: "once" | "timed" | "always";
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

/** Clock skew tolerated on exp, iat and nbf. */
export const LEEWAY_S = 60;

export const deny = (reason: ReasonCode, detail: string): Denied => ({ ok: false, reason, detail });

/** Exit status of the verifier for a decision (contract: 0 allowed, 77 denied, 69 unreachable, 78 config). */
export function exitStatusFor(d: Decision): 0 | 69 | 77 | 78 {
  if (d.ok) return 0;
  if (d.reason === "idp_unreachable" || d.reason === "jwks_unavailable") return 69;
  if (d.reason === "config_invalid") return 78;
  return 77;
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
  if (jwt.length > 16 * 1024 || !JWT_SHAPE.test(jwt))
    return deny("token_malformed", "the grant token is not a compact JWT");
  return undefined;
}

/**
 * The issuer allow-list, checked on the UNVERIFIED claims before any network call: a token naming
 * another issuer never makes the verifier fetch anything from it.
 */
export function checkIssuer(iss: unknown, policy: Policy): { ok: true; issuer: string } | Denied {
  if (typeof iss !== "string" || iss.length === 0)
    return deny("token_malformed", "the token has no iss claim");
  const normalized = iss.replace(/\/+$/, "");
  if (!policy.issuers.includes(normalized)) {
    return deny(
      "issuer_not_allowed",
      `issuer ${iss} is not in the policy (allowed: ${policy.issuers.join(", ")})`,
    );
  }
  return { ok: true, issuer: normalized };
}

const GRANT_TYPES = ["once", "timed", "always"] as const;

/**
 * Every check on the signature-verified claims, in the contract's order. `nowS` is Unix seconds.
 */
export function decide(
  claims: Record<string, unknown>,
  request: VerifyRequest,
  policy: Policy,
  nowS: number,
): Decision {
  // Shape first: a token missing what we check is malformed, not "mismatched".
  for (const k of ["sub", "jti", "grant_id"] as const) {
    if (typeof claims[k] !== "string" || (claims[k] as string).length === 0) {
      return deny("token_malformed", `the token has no ${k} claim`);
    }
  }
  for (const k of ["exp", "iat"] as const) {
    if (typeof claims[k] !== "number" || !Number.isFinite(claims[k])) {
      return deny("token_malformed", `the token has no numeric ${k} claim`);
    }
  }
  if (claims.nbf !== undefined && (typeof claims.nbf !== "number" || !Number.isFinite(claims.nbf))) {
    return deny("token_malformed", "nbf is not a number");
  }
  const grantType = claims.grant_type;
  if (typeof grantType !== "string" || !(GRANT_TYPES as readonly string[]).includes(grantType)) {
    return deny("token_malformed", "grant_type is not once, timed or always");
  }
  const sub = claims.sub as string;

  const issuer = checkIssuer(claims.iss, policy);
  if (!issuer.ok) return issuer;

  const aud = claims.aud;
  const auds =
    typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud.filter((a) => typeof a === "string") : [];
  if (auds.length === 0) return deny("token_malformed", "the token has no aud claim");
  if (!auds.some((a) => policy.audiences.includes(a))) {
    return deny(
      "audience_not_allowed",
      `audience ${auds.join(",")} is not accepted (policy: ${policy.audiences.join(", ")})`,
    );
  }

  const exp = claims.exp as number;
  const iat = claims.iat as number;
  if (nowS > exp + LEEWAY_S) return deny("token_expired", `the grant token expired at ${iso(exp)}`);
  if (iat > nowS + LEEWAY_S)
    return deny("token_not_yet_valid", `the grant token was issued in the future (${iso(iat)})`);
  if (typeof claims.nbf === "number" && claims.nbf > nowS + LEEWAY_S) {
    return deny("token_not_yet_valid", `the grant token is not valid before ${iso(claims.nbf)}`);
  }

  if (claims.target_host !== policy.host) {
    return deny(
      "host_mismatch",
      `the grant is for host ${JSON.stringify(claims.target_host ?? null)}, this host is ${JSON.stringify(policy.host)}`,
    );
  }

  // The command claim is the authority; the hash is checked in addition, never instead.
  const command = claims.command;
  if (!Array.isArray(command) || !command.every((c) => typeof c === "string")) {
    return deny("command_mismatch", "the grant token carries no command claim");
  }
  const mismatch = firstDifference(command as string[], request.argv);
  if (mismatch) return deny("command_mismatch", mismatch);
  const hash = claims.cmd_hash;
  if (hash !== undefined) {
    if (typeof hash !== "string") return deny("cmd_hash_mismatch", "cmd_hash is not a string");
    if (hash.startsWith(CMD_HASH_PREFIX)) {
      if (!isCanonicalCmdHash(hash) || hash !== request.cmd_hash) {
        return deny(
          "cmd_hash_mismatch",
          `the grant's cmd_hash ${hash} does not match the command (${request.cmd_hash})`,
        );
      }
    } else if (hash !== legacyCmdHash(request.argv)) {
      // A legacy bare-hex hash is only cross-checked: `command` above already decided.
      return deny("cmd_hash_mismatch", "the grant's legacy cmd_hash does not match the command");
    }
  }

  const decidedBy = claims.decided_by;
  if (typeof decidedBy !== "string" || decidedBy.length === 0) {
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

  const runAs = claims.run_as === undefined ? "root" : claims.run_as;
  if (typeof runAs !== "string" || runAs !== request.run_as) {
    return deny(
      "run_as_not_allowed",
      `the grant is for running as ${String(runAs)}, the request is for ${request.run_as}`,
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
    grant_id: claims.grant_id as string,
    cmd_hash: request.cmd_hash,
    run_as: runAs,
    sub,
    decided_by: decidedBy,
    issuer: issuer.issuer,
    grant_type: grantType as Allowed["grant_type"],
    jti: claims.jti as string,
  };
}

/** Maps the IdP's consume answer to a decision: only consumed (once) or valid (timed/always) allow. */
export function consumeOutcome(status: number, body: unknown, allowed: Allowed): Decision {
  const b = body && typeof body === "object" ? (body as Record<string, unknown>) : {};
  if (status >= 200 && status < 300 && !b.error) {
    const s = b.status;
    const expected = allowed.grant_type === "once" ? "consumed" : "valid";
    if (s === expected) return allowed;
    return deny(
      "grant_not_usable",
      `the IdP answered consume with status ${JSON.stringify(s ?? null)} (expected ${expected})`,
    );
  }
  const error = typeof b.error === "string" ? b.error : typeof b.title === "string" ? b.title : undefined;
  const detail = typeof b.detail === "string" ? `: ${b.detail}` : "";
  return deny(
    "grant_not_usable",
    `the IdP refused to consume the grant (${status} ${error ?? "error"}${detail})`,
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
