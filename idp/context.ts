import { EventEmitter } from "node:events";
import { ProblemError } from "../protocol/problem.ts";
import { CLI_TOKEN_AUDIENCE, type Grant } from "../protocol/types.ts";
import { type Actor, effectiveStatus } from "./grants.ts";
import type { Call } from "./http.ts";
import type { Keyring } from "./keys.ts";
import type { LimitClass } from "./limits.ts";
import type { Logger } from "./log.ts";
import type { Store, UserRecord } from "./store/types.ts";
import { TokenError, verifyJwt } from "./tokens.ts";

/** Everything a route needs, built once by the server. */
export interface Idp {
  store: Store;
  keys: Keyring;
  issuer: string;
  /** Issuer without a trailing slash: the base of every advertised endpoint. */
  base: string;
  tokenTtl: number;
  log: Logger;
  events: GrantEvents;
  /** Unix seconds. */
  now(): number;
  /** Resolves when the server shuts down (long polls answer at once). */
  shutdown: AbortSignal;
  /** Verifies a session token this IdP issued (`aud: apes-cli`); throws TokenError. */
  sessionClaims(token: string): Record<string, unknown>;
  authenticate(call: Call): Principal;
  /** Takes one request from `key`'s bucket of the class; throws 429 (with retry_after) when empty. */
  rateLimit(limitClass: LimitClass, key: string): void;
}

export interface Principal {
  sub: string;
  user: UserRecord;
  actor: Actor;
  /** For a delegated (token-exchange) token: who is acting for `sub`. */
  actingParty?: string;
  tokenExp: number;
}

/** In-process change notification, keyed by grant id: long polls wait on it (no db polling). */
export class GrantEvents {
  private readonly emitter = new EventEmitter();
  constructor() {
    this.emitter.setMaxListeners(0);
  }
  changed(id: string): void {
    this.emitter.emit(id);
  }
  /** Resolves on the next change of `id`, or when `signal` aborts. */
  wait(id: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.emitter.off(id, done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      if (signal.aborted) return resolve();
      this.emitter.on(id, done);
      signal.addEventListener("abort", done, { once: true });
    });
  }
  listeners(id: string): number {
    return this.emitter.listenerCount(id);
  }
}

/**
 * Verifies IdP session tokens (`aud: apes-cli`) for every endpoint, the API and /token alike; each
 * caller maps TokenError to its own error format. Verified token strings are cached until their
 * exp, so a client's repeated requests cost a map lookup instead of an Ed25519 verify; what may
 * change (the user disabled, a delegation revoked) is re-checked on every request by principalFrom.
 */
export class SessionVerifier {
  private readonly cache = new Map<string, Record<string, unknown>>();
  private readonly idp: () => Idp;
  constructor(idp: () => Idp) {
    this.idp = idp;
  }

  /** True when `token` was verified before and has not expired (no signature check needed). */
  verified(token: string): boolean {
    return ((this.cache.get(token)?.exp as number | undefined) ?? 0) > this.idp().now();
  }

  claims(token: string): Record<string, unknown> {
    const idp = this.idp();
    const now = idp.now();
    const cached = this.cache.get(token);
    if (cached) {
      if ((cached.exp as number) > now) return cached;
      this.cache.delete(token);
    }
    const claims = verifyJwt(token, (kid) => idp.keys.publicKey(kid, now), {
      now,
      issuer: idp.issuer,
      audience: CLI_TOKEN_AUDIENCE,
      leeway: 0,
    });
    // AuthZ-JWTs carry act too, but name a grant (and never the session audience: it is reserved).
    if (typeof claims.sub !== "string" || claims.act === undefined || claims.grant_id !== undefined) {
      throw new TokenError("claims", "not an IdP session token");
    }
    if (this.cache.size >= 50_000) this.cache.clear();
    this.cache.set(token, claims);
    return claims;
  }
}

export function bearer(call: Call): string {
  const h = call.req.headers.authorization;
  if (!h) throw new ProblemError("unauthorized", "send Authorization: Bearer <token>");
  const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(h);
  if (!m) throw new ProblemError("invalid_token", "malformed Authorization header (expected Bearer)");
  return m[1]!;
}

/** What principal resolution reads on every request (the server's cached, change-aware store). */
export type PrincipalLookups = Pick<Store, "getUser" | "getGrant">;

/**
 * The principal of a verified session token, re-checked against current state on every request: the
 * subject exists and is enabled; for a delegated token also its delegation (still approved or used,
 * not revoked or expired, naming exactly these two parties and the IdP's own audience) and the acting party
 * (exists, enabled). A revocation or a disabled account therefore stops a live token at once.
 */
export function principalFrom(
  claims: Record<string, unknown>,
  lookups: PrincipalLookups,
  now: number,
): Principal {
  const user = lookups.getUser(claims.sub as string);
  if (!user) throw new ProblemError("invalid_token", "the token's subject is not a user of this IdP");
  if (user.disabled) throw new ProblemError("invalid_token", "the account is disabled");
  const act = claims.act;
  const actingParty =
    act && typeof act === "object" && typeof (act as { sub?: unknown }).sub === "string"
      ? (act as { sub: string }).sub
      : undefined;
  if (actingParty === undefined && act !== "human" && act !== "agent") {
    throw new ProblemError("invalid_token", "the token's act claim is invalid");
  }
  if (actingParty !== undefined) {
    const id = claims.delegation_grant;
    const delegation = typeof id === "string" ? lookups.getGrant(id)?.grant : undefined;
    const problem = delegatedTokenProblem(
      user.email,
      actingParty,
      delegation,
      lookups.getUser(actingParty),
      now,
    );
    if (problem) throw new ProblemError("invalid_token", problem);
  }
  const p: Principal = {
    sub: user.email,
    user,
    actor: { sub: user.email, kind: user.kind, admin: user.admin, delegated: actingParty !== undefined },
    tokenExp: claims.exp as number,
  };
  if (actingParty !== undefined) p.actingParty = actingParty;
  return p;
}

/** Why a delegated token (sub = delegator, act.sub = delegate) may no longer be used; undefined: it may. */
export function delegatedTokenProblem(
  delegator: string,
  delegate: string,
  delegation: Grant | undefined,
  delegateUser: UserRecord | undefined,
  now: number,
): string | undefined {
  if (delegation?.type !== "delegation") return "the token's delegation does not exist";
  const r = delegation.request;
  if (r.delegator !== delegator || r.delegate !== delegate || r.audience !== CLI_TOKEN_AUDIENCE) {
    return "the token does not match its delegation";
  }
  const status = effectiveStatus(delegation, now);
  // "used": a `once` delegation after its one exchange, which issued this very token.
  if (status !== "approved" && status !== "used") return `the token's delegation is ${status}`;
  if (!delegateUser || delegateUser.disabled) return "the acting party's account is disabled";
  return undefined;
}

/**
 * Token bucket per key: `limit` requests per `windowSec`, refilled continuously. At most `capacity`
 * keys are tracked; beyond, the least recently used bucket is forgotten (it has had the longest to
 * refill), never the whole table: a flood of new keys cannot reset an active client's count.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly limit: number;
  private readonly perMs: number;
  private readonly capacity: number;
  constructor(limit: number, windowSec: number, capacity = 100_000) {
    this.limit = limit;
    this.perMs = limit / (windowSec * 1000);
    this.capacity = capacity;
  }
  /** Seconds to wait, or 0 when the request may proceed. */
  take(key: string, nowMs: number): number {
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-inserted below: the Map's order is the order of last use
    } else {
      b = { tokens: this.limit, at: nowMs };
      if (this.buckets.size >= this.capacity) this.buckets.delete(this.buckets.keys().next().value!);
    }
    this.buckets.set(key, b);
    b.tokens = Math.min(this.limit, b.tokens + (nowMs - b.at) * this.perMs);
    b.at = nowMs;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.perMs / 1000));
  }
}

/** `N/PERIOD` like "600/1m", "20/10s", "100000/1h"; "off" disables. */
export function parseRateLimit(spec: string): { limit: number; windowSec: number } | null {
  if (spec === "off" || spec === "0") return null;
  const m = /^(\d+)\/(\d*)(s|m|h)$/.exec(spec.trim());
  if (!m) throw new Error(`invalid rate limit "${spec}" (expected N/PERIOD such as 600/1m)`);
  const limit = Number(m[1]);
  const windowSec = Number(m[2] || "1") * { s: 1, m: 60, h: 3600 }[m[3] as "s" | "m" | "h"];
  if (limit < 1 || windowSec < 1) throw new Error(`invalid rate limit "${spec}"`);
  return { limit, windowSec };
}
