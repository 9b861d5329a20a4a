/**
 * Every reason an elevation's audit line can carry, in one place (docs/elevation.md sections 5-6):
 * the code, the part that produces it, the exit status `apes --reason R -- CMD` ends with, and what
 * it means. The TypeScript producers take their types from these tables, so a code that is not
 * listed here does not compile; test/contract/elevation-reasons.test.ts checks the shim's C literals
 * against them, that every listed code is produced somewhere, and that README's list and
 * docs/elevation.md's table are the ones scripts/elevation-docs.ts generates from this module.
 */

/** Who writes the code: the setuid shim itself, the requester (the caller's own process), the verifier. */
export type Producer = "shim" | "requester" | "verifier";

export interface ReasonInfo {
  /** The exit status the elevation ends with (the shim passes the requester's and the verifier's on). */
  readonly exit: number;
  readonly meaning: string;
}

/** The elevation's exit statuses (the shim's enum in native/apes-shim.c; cli/exit-codes.ts agrees). */
export const ELEVATION_EXIT = {
  error: 1,
  usage: 2,
  unavailable: 69,
  pending: 75,
  denied: 77,
  config: 78,
  cannot_execute: 126,
  not_found: 127,
  interrupted: 130,
} as const;

/** What each exit status means for `apes --reason R -- CMD` (besides 0 and the command's own status). */
export const ELEVATION_EXIT_MEANINGS: Readonly<Record<keyof typeof ELEVATION_EXIT, string>> = {
  pending: "pending (`--no-wait`, `--timeout`)",
  denied: "denied, revoked or not allowed",
  unavailable: "the IdP unreachable (or too slow for the verifier's deadline)",
  config: "not installed, or a policy problem",
  usage: "a bad command line",
  cannot_execute: "cannot execute",
  not_found: "not found",
  interrupted: "interrupted",
  error: "any other failure (the message says which)",
};

const E = ELEVATION_EXIT;

/** Codes the shim writes itself (as audited). */
export const SHIM_REASONS = {
  audit_insecure: {
    exit: E.config,
    meaning: "the audit log or a directory above it is not root's alone (to syslog only; nothing runs)",
  },
  config_missing: { exit: E.config, meaning: "no policy file (set one up with `sudo apes trust ...`)" },
  config_insecure: {
    exit: E.config,
    meaning: "the policy or a directory above it could be changed by someone other than root",
  },
  argv_invalid_utf8: {
    exit: E.usage,
    meaning: "an argument is not valid UTF-8 (audited with an empty argv)",
  },
  argv_too_many: {
    exit: E.usage,
    meaning: "more arguments than the shim takes (audited with an empty argv)",
  },
  argv_arg_too_long: { exit: E.usage, meaning: "one argument is too long (audited with an empty argv)" },
  argv_too_long: { exit: E.usage, meaning: "the whole command is too long (audited with an empty argv)" },
  run_as_unknown: { exit: E.usage, meaning: "the `--as` user does not exist" },
  caller_unknown: { exit: E.error, meaning: "the calling uid has no passwd entry" },
  verifier_missing: { exit: E.config, meaning: "the verifier's user `_apes` is missing" },
  command_not_found: {
    exit: E.not_found,
    meaning: "a command given as a path does not exist for the caller",
  },
  command_not_file: { exit: E.cannot_execute, meaning: "a command given as a path is not a regular file" },
  command_writable: {
    exit: E.denied,
    meaning: "a command given as a path could be changed by someone other than root",
  },
  command_changed: {
    exit: E.cannot_execute,
    meaning: "a command given as a path changed between the approval and the exec",
  },
  requester_failed: {
    exit: E.denied,
    meaning: "the requester was killed, or returned neither a token nor a valid code (exit: its own status)",
  },
  verifier_timeout: { exit: E.unavailable, meaning: "the verifier did not finish within its deadline" },
  verdict_mismatch: {
    exit: E.denied,
    meaning: "the verifier approved another command or another target user",
  },
  verifier_failed: {
    exit: E.denied,
    meaning: "the verifier gave no valid verdict or code, or an approval without a grant id",
  },
  shim_error: {
    exit: E.error,
    meaning: "any other failure of the shim after the audit log is open (exit: the message's)",
  },
} as const satisfies Record<string, ReasonInfo>;

/** The prefix the shim puts before a requester's code: the requester is the caller's own process. */
export const REQUESTER_PREFIX = "requester_";

/** Codes the requester writes to the shim's pipe instead of a token; audited as `requester_<code>`. */
export const REQUESTER_REASONS = {
  grant_denied: { exit: E.denied, meaning: "an approver denied the grant" },
  grant_revoked: { exit: E.denied, meaning: "the grant was revoked" },
  grant_expired: { exit: E.denied, meaning: "the grant expired" },
  grant_used: { exit: E.denied, meaning: "the once grant was already used" },
  grant_mismatch: {
    exit: E.denied,
    meaning: "the `--grant` grant is for another command, user, host or audience",
  },
  grant_not_yours: { exit: E.denied, meaning: "the `--grant` grant was requested by someone else" },
  interrupted: {
    exit: E.interrupted,
    meaning: "Ctrl-C or SIGTERM while waiting (a grant it created is revoked)",
  },
  idp_unreachable: { exit: E.unavailable, meaning: "the IdP could not be reached" },
  not_permitted: { exit: E.denied, meaning: "the IdP refused the request or the session" },
  config: { exit: E.config, meaning: "the requester's configuration or session is missing or invalid" },
  usage: { exit: E.usage, meaning: "a bad option" },
  error: { exit: E.error, meaning: "any other failure (exit: its own status)" },
} as const satisfies Record<string, ReasonInfo>;

/** Codes the verifier puts in its verdict, one per check (docs/elevation.md section 3). */
export const VERIFIER_REASONS = {
  request_invalid: { exit: E.denied, meaning: "the shim's request line is malformed" },
  config_invalid: {
    exit: E.config,
    meaning: "the policy is invalid (the shim's code too when the verifier exits 78 without one)",
  },
  token_malformed: { exit: E.denied, meaning: "the token is not a compact JWT with the required claims" },
  issuer_not_allowed: { exit: E.denied, meaning: "the token's issuer is not in the policy" },
  jwks_unavailable: { exit: E.unavailable, meaning: "the issuer's discovery or keys could not be fetched" },
  signature_invalid: { exit: E.denied, meaning: "the signature, its algorithm or its key is wrong" },
  audience_not_allowed: { exit: E.denied, meaning: "`aud` is not an audience of the policy" },
  token_expired: { exit: E.denied, meaning: "`exp` has passed" },
  token_not_yet_valid: { exit: E.denied, meaning: "`iat` or `nbf` is in the future" },
  host_mismatch: { exit: E.denied, meaning: "`target_host` is not this host" },
  command_mismatch: { exit: E.denied, meaning: "`command` is not the argv, element by element" },
  cmd_hash_mismatch: { exit: E.denied, meaning: "`cmd_hash` is not the hash of the argv" },
  approver_not_allowed: {
    exit: E.denied,
    meaning: "`decided_by` is missing or not an approver of the policy",
  },
  self_approval: {
    exit: E.denied,
    meaning: "the requester approved its own grant and the policy forbids that",
  },
  identity_not_mapped: { exit: E.denied, meaning: "`sub` is not mapped to the calling Unix user" },
  run_as_not_allowed: { exit: E.denied, meaning: "`run_as` is not the requested user, or not allowed" },
  grant_not_usable: {
    exit: E.denied,
    meaning:
      "the IdP refused the consume: `already_consumed`, `revoked`, `denied`, `expired`, `not_approved`",
  },
  idp_unreachable: {
    exit: E.unavailable,
    meaning:
      "the consume could not reach the IdP (the shim's code too when the verifier exits 69 without one)",
  },
} as const satisfies Record<string, ReasonInfo>;

export type ShimReason = keyof typeof SHIM_REASONS;
export type RequesterReason = keyof typeof REQUESTER_REASONS;
export type VerifierReason = keyof typeof VERIFIER_REASONS;

/** Verifier codes the shim also writes, as a fallback, when the verifier exits 69 or 78 without a valid code. */
export const SHIM_FALLBACK_REASONS: readonly VerifierReason[] = ["idp_unreachable", "config_invalid"];

/** The reason charset and length the shim accepts from the requester and the verifier (`reason_ok`). */
export const REASON_PATTERN = /^[a-z0-9_]{1,64}$/;

/** The requester's first line on the shim's result pipe once it has an approved grant, before it
 * fetches the token: the shim starts the verifier then (READY in native/apes-shim.c). */
export const READY_LINE = "ready\n";

export interface AuditReason extends ReasonInfo {
  /** As the audit line says it (a requester's code with its prefix). */
  readonly code: string;
  readonly producers: readonly Producer[];
}

/** Every code an audit line can carry, in the order of the tables above. */
export function auditReasons(): AuditReason[] {
  const out: AuditReason[] = [];
  for (const [code, info] of Object.entries(SHIM_REASONS)) out.push({ code, producers: ["shim"], ...info });
  for (const [code, info] of Object.entries(REQUESTER_REASONS))
    out.push({ code: `${REQUESTER_PREFIX}${code}`, producers: ["requester"], ...info });
  for (const [code, info] of Object.entries(VERIFIER_REASONS)) {
    const also = (SHIM_FALLBACK_REASONS as readonly string[]).includes(code);
    out.push({ code, producers: also ? ["verifier", "shim"] : ["verifier"], ...info });
  }
  return out;
}
