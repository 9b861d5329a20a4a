import { createHash } from "node:crypto";
import { cmdHash, isCanonicalCmdHash } from "../protocol/cmd-hash.ts";
import { hasUnsafeChars } from "../protocol/display.ts";
import { durationSeconds } from "../protocol/duration.ts";
import { canonicalIdentity, normalizeIdentity } from "../protocol/names.ts";
import { ProblemError } from "../protocol/problem.ts";
import type { Act, AuthzClaims, Grant, GrantRequest, GrantStatus, GrantType } from "../protocol/types.ts";
import { GRANT_TYPES } from "../protocol/types.ts";
import type { UserRecord } from "./store/types.ts";

/**
 * Pure decisions about grants: who may see, decide, revoke and use a grant, which state changes
 * are legal, and what a valid request looks like. No I/O; the routes apply the results.
 *
 * Decision rule (documented in README):
 * - An agent's grant is decided by its owner or one of its approvers. Never by the agent itself,
 *   never by another agent, never through a delegated token. Admins do not decide for agents they
 *   neither own nor approve (ownership is the trust relation).
 * - A human's grant is decided by the human itself, one of its approvers, or an admin (the human is
 *   the authority for its own actions; a verifier may still require decided_by != requester).
 * - Deciders are always humans, enabled, acting with their own (non-delegated) token.
 */

export interface Actor {
  sub: string;
  kind: "human" | "agent";
  admin: boolean;
  /** Acting through a token-exchange token (someone acting for `sub`). */
  delegated: boolean;
}

export type Decision = { ok: true } | { ok: false; reason: string };
const allow: Decision = { ok: true };
const deny = (reason: string): Decision => ({ ok: false, reason });

export function canDecide(actor: Actor, requester: UserRecord | undefined): Decision {
  if (actor.delegated) return deny("a delegated token cannot approve or deny grants");
  if (actor.kind !== "human") return deny("only humans approve or deny grants");
  if (!requester) return deny("the requester is not a user of this IdP");
  if (requester.kind === "agent") {
    if (requester.email === actor.sub) return deny("an agent cannot decide its own grant");
    if (requester.owner === actor.sub || requester.approvers.includes(actor.sub)) return allow;
    return deny("only the agent's owner or one of its approvers may decide its grants");
  }
  if (requester.email === actor.sub || requester.approvers.includes(actor.sub) || actor.admin) return allow;
  return deny("only the requester, one of its approvers or an admin may decide this grant");
}

/** Read access: own grants, grants of users you own or approve, delegations you are party to; admins all. */
export function canView(actor: Actor, grant: Grant, requester: UserRecord | undefined): boolean {
  if (actor.admin) return true;
  const r = grant.request;
  if (r.requester === actor.sub) return true;
  if (grant.type === "delegation" && (r.delegator === actor.sub || r.delegate === actor.sub)) return true;
  if (!requester) return false;
  return requester.owner === actor.sub || requester.approvers.includes(actor.sub);
}

/** Revoke: the requester (its own grant, approved or pending) or anyone who may decide it. */
export function canRevoke(actor: Actor, grant: Grant, requester: UserRecord | undefined): Decision {
  if (grant.request.requester === actor.sub) return allow;
  return canDecide(actor, requester);
}

export type Action = "approve" | "deny" | "revoke";

/** Statuses from which an action is legal. Revoke by the requester also cancels its own pending grant. */
export function allowedFrom(action: Action, byRequester: boolean): readonly GrantStatus[] {
  switch (action) {
    case "approve":
    case "deny":
      return ["pending"];
    case "revoke":
      return byRequester ? ["approved", "pending"] : ["approved"];
  }
}

export function targetStatus(action: Action): GrantStatus {
  return action === "approve" ? "approved" : action === "deny" ? "denied" : "revoked";
}

/** Effective status at `now`: an approved grant past expires_at is expired. */
export function effectiveStatus(grant: Grant, now: number): GrantStatus {
  if (grant.status === "approved" && grant.expires_at !== undefined && grant.expires_at <= now)
    return "expired";
  return grant.status;
}

export type ConsumeOutcome =
  | { ok: true; status: "consumed" | "valid"; markUsed: boolean }
  | {
      ok: false;
      error: "already_consumed" | "revoked" | "denied" | "expired" | "not_approved";
      status: GrantStatus;
    };

/** The IdP's answer to a consume of this grant now (the `once` case is then applied atomically by the store). */
export function consumeResultFor(grant: Grant, now: number): ConsumeOutcome {
  const status = effectiveStatus(grant, now);
  switch (status) {
    case "approved":
      return grant.request.grant_type === "once"
        ? { ok: true, status: "consumed", markUsed: true }
        : { ok: true, status: "valid", markUsed: false };
    case "used":
      return { ok: false, error: "already_consumed", status };
    case "revoked":
      return { ok: false, error: "revoked", status };
    case "denied":
      return { ok: false, error: "denied", status };
    case "expired":
      return { ok: false, error: "expired", status };
    default:
      return { ok: false, error: "not_approved", status };
  }
}

export const ONCE_TTL = 300;
export const ALWAYS_TTL = 3600;

/** AuthZ-JWT exp: once 300 s, timed = the grant's expires_at, always 3600 s. */
export function authzExp(grant: Grant, iat: number): number {
  switch (grant.request.grant_type) {
    case "once":
      return iat + ONCE_TTL;
    case "timed":
      return grant.expires_at ?? iat + ONCE_TTL;
    case "always":
      return iat + ALWAYS_TTL;
  }
}

export interface AuthzClaimsInput {
  issuer: string;
  grant: Grant;
  /** The requester's kind: the token says whether an agent or a human acts with it. */
  act: Act;
  iat: number;
  jti: string;
}

/** The AuthZ-JWT payload, exactly the fields of authz-jwt-claims.json. */
export function authzClaims({ issuer, grant, act, iat, jti }: AuthzClaimsInput): AuthzClaims {
  const r = grant.request;
  const claims: AuthzClaims = {
    iss: issuer,
    sub: r.requester,
    act,
    aud: r.audience,
    target_host: r.target_host,
    iat,
    exp: authzExp(grant, iat),
    jti,
    grant_id: grant.id,
    grant_type: r.grant_type,
    approval: r.grant_type,
  };
  if (r.command) claims.command = r.command;
  if (r.cmd_hash) claims.cmd_hash = r.cmd_hash;
  if (r.run_as !== undefined) claims.run_as = r.run_as;
  if (r.permissions) claims.permissions = r.permissions;
  if (grant.decided_by !== undefined) claims.decided_by = grant.decided_by;
  return claims;
}

/** Key for reusing an approved timed/always grant: same host, audience, run_as and command. */
export function matchKey(r: GrantRequest): string {
  return createHash("sha256")
    .update(
      JSON.stringify([
        r.target_host,
        r.audience,
        r.run_as ?? null,
        r.cmd_hash ?? null,
        r.permissions ?? null,
      ]),
    )
    .digest("base64url");
}

// --- input validation ---

const MAX_DURATION = 366 * 24 * 3600;

/** Seconds from a positive integer or a duration text like "90s", "30m", "1h30m" (protocol/duration.ts). */
export function parseDuration(value: unknown, field = "duration"): number {
  if (typeof value !== "number" && typeof value !== "string")
    throw new ProblemError("invalid_request", `${field} must be seconds or a string like "30m"`);
  const seconds = durationSeconds(value);
  if (seconds === undefined && typeof value === "string")
    throw new ProblemError("invalid_request", `${field} must be seconds or a string like "30m"`);
  if (seconds === undefined || seconds < 1 || seconds > MAX_DURATION) {
    throw new ProblemError(
      "invalid_request",
      `${field} must be a whole number of seconds in 1..${MAX_DURATION}`,
    );
  }
  return seconds;
}

export function parseGrantType(value: unknown): GrantType {
  if (typeof value !== "string" || !(GRANT_TYPES as readonly string[]).includes(value)) {
    throw new ProblemError("invalid_request", `grant_type must be one of ${GRANT_TYPES.join(", ")}`);
  }
  return value as GrantType;
}

function str(
  body: Record<string, unknown>,
  field: string,
  max: number,
  required: boolean,
): string | undefined {
  const v = body[field];
  if (v === undefined) {
    if (required) throw new ProblemError("invalid_request", `${field} is required`);
    return undefined;
  }
  if (typeof v !== "string" || v.length === 0 || v.length > max) {
    throw new ProblemError(
      "invalid_request",
      `${field} must be a non-empty string of at most ${max} characters`,
    );
  }
  refuseUnsafe(field, v);
  return v;
}

/**
 * Text a person reads when deciding (reason, audience, host, scopes ...) must show as itself: no
 * control, bidi or invisible character. Only `command` may hold them (a command may need a newline);
 * every display then escapes and marks it (commandWarning).
 */
export function refuseUnsafe(field: string, value: string): void {
  if (hasUnsafeChars(value)) {
    throw new ProblemError(
      "invalid_request",
      `${field} contains control, bidi or invisible characters (only command may hold them)`,
    );
  }
}

function strArray(
  body: Record<string, unknown>,
  field: string,
  maxItems: number,
  { unsafeAllowed = false } = {},
): string[] | undefined {
  const v = body[field];
  if (v === undefined) return undefined;
  if (
    !Array.isArray(v) ||
    v.length > maxItems ||
    !v.every((x) => typeof x === "string" && x.length <= 4096)
  ) {
    throw new ProblemError("invalid_request", `${field} must be an array of at most ${maxItems} strings`);
  }
  if (!unsafeAllowed) for (const [i, x] of (v as string[]).entries()) refuseUnsafe(`${field}[${i}]`, x);
  return v as string[];
}

const CREATE_FIELDS = [
  "requester",
  "target",
  "target_host",
  "audience",
  "grant_type",
  "command",
  "cmd_hash",
  "duration",
  "reason",
  "run_as",
  "permissions",
] as const;

/**
 * Validates a create body into a GrantRequest for `requester` (the token's subject). `target` (the
 * grant flow's name for the target system) is stored as `target_host`; both may be sent only when
 * equal. The audience defaults to the target: a permission grant for "prod-server" is verified by
 * prod-server (elevation requests name their audience, "escapes", explicitly).
 */
export function parseGrantRequest(body: Record<string, unknown>, requester: string): GrantRequest {
  for (const k of Object.keys(body)) {
    if (k === "delegator" || k === "delegate" || k === "scopes") {
      throw new ProblemError("invalid_request", `${k} belongs to delegations; use the delegations endpoint`);
    }
    if (!(CREATE_FIELDS as readonly string[]).includes(k)) {
      throw new ProblemError("invalid_request", `unknown field "${k}"`);
    }
  }
  if (body.requester !== undefined && canonicalIdentity(body.requester) !== requester) {
    throw new ProblemError("forbidden", "requester must be the authenticated identity");
  }
  const grantType = parseGrantType(body.grant_type);
  const target = str(body, "target", 253, false);
  const targetHost = str(body, "target_host", 253, false);
  if (target !== undefined && targetHost !== undefined && target !== targetHost) {
    throw new ProblemError("invalid_request", "target and target_host name different systems; send one");
  }
  const host = targetHost ?? target;
  if (host === undefined) throw new ProblemError("invalid_request", "target (or target_host) is required");
  const request: GrantRequest = {
    requester,
    target_host: host,
    audience: str(body, "audience", 256, false) ?? host,
    grant_type: grantType,
  };
  if (grantType === "timed") {
    if (body.duration === undefined)
      throw new ProblemError("invalid_request", "a timed grant needs duration");
    request.duration = parseDuration(body.duration);
  } else if (body.duration !== undefined) {
    throw new ProblemError("invalid_request", "duration is only valid for timed grants");
  }
  const command = strArray(body, "command", 1024, { unsafeAllowed: true });
  if (command !== undefined) {
    if (command.length === 0) throw new ProblemError("invalid_request", "command must not be empty");
    if (!command.every((a) => a.isWellFormed())) {
      throw new ProblemError("invalid_request", "command contains malformed Unicode");
    }
    request.command = command;
    const hash = cmdHash(command);
    if (body.cmd_hash !== undefined && body.cmd_hash !== hash) {
      throw new ProblemError(
        "invalid_request",
        "cmd_hash does not match command (SHA-256 over JSON of argv)",
      );
    }
    request.cmd_hash = hash;
  } else if (body.cmd_hash !== undefined) {
    if (!isCanonicalCmdHash(body.cmd_hash)) {
      throw new ProblemError("invalid_request", 'cmd_hash must be "SHA-256:" + 64 lowercase hex digits');
    }
    request.cmd_hash = body.cmd_hash;
  }
  const reason = str(body, "reason", 1000, false);
  if (reason !== undefined) request.reason = reason;
  const runAs = str(body, "run_as", 64, false);
  if (runAs !== undefined) request.run_as = runAs;
  const permissions = strArray(body, "permissions", 100);
  if (permissions !== undefined) request.permissions = permissions;
  if (request.command === undefined && request.cmd_hash === undefined && request.permissions === undefined) {
    throw new ProblemError("invalid_request", "a grant needs command, cmd_hash or permissions");
  }
  return request;
}

/** Approve body: optional overrides `{grant_type, duration}` from the approver. */
export function parseApproveOverrides(
  body: Record<string, unknown>,
  current: GrantRequest,
): { grantType: GrantType; duration: number | undefined } {
  for (const k of Object.keys(body)) {
    if (k !== "grant_type" && k !== "duration")
      throw new ProblemError("invalid_request", `unknown field "${k}"`);
  }
  const grantType = body.grant_type === undefined ? current.grant_type : parseGrantType(body.grant_type);
  if (grantType !== "timed") {
    if (body.duration !== undefined) {
      throw new ProblemError("invalid_request", "duration is only valid when approving as timed");
    }
    return { grantType, duration: undefined };
  }
  const duration = body.duration !== undefined ? parseDuration(body.duration) : current.duration;
  if (duration === undefined) throw new ProblemError("invalid_request", "approving as timed needs duration");
  return { grantType, duration };
}

/** An identity from a request body in its stored form (protocol/names.ts), or a 400 naming the field. */
export function identityField(field: string, value: unknown): string {
  const r = normalizeIdentity(value);
  if (!r.ok) throw new ProblemError("invalid_request", `${field} ${r.reason}`);
  return r.identity;
}

/** The email of an agent enrolled by `owner`: `<name>+agent@<owner's domain>`. */
export function agentEmail(name: string, owner: string): string {
  return `${name}+agent@${owner.slice(owner.lastIndexOf("@") + 1)}`;
}

export const AGENT_NAME = /^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$/;
